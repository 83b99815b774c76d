// This file holds the Linux side of shim.go: the signal mask a worker starts
// with.
package main

import (
	"os"
	"syscall"
	"unsafe"
)

// resetSignalMask empties the calling thread's signal mask, which execve hands
// to the command: a mask prefork inherited from whatever started it (signals
// blocked there stay blocked in every thread of a Go program) must not keep a
// worker from being stopped. The shim's main goroutine is locked to its thread.
func resetSignalMask() error {
	const sigSetmask = 2
	var empty uint64
	_, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, sigSetmask, uintptr(unsafe.Pointer(&empty)), 0, unsafe.Sizeof(empty), 0, 0)
	if e != 0 {
		return os.NewSyscallError("rt_sigprocmask", e)
	}
	return nil
}
