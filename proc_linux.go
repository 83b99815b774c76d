// This file holds the Linux side of process handling: the parent-death signal,
// the child-subreaper bit, and the path prefork re-executes for its shim.
package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

const (
	sigPWR             = syscall.SIGPWR
	reuseportSupported = true
	hasPdeathsig       = true
)

// workerProcAttr puts the worker in its own process group and asks the kernel to
// SIGKILL it if prefork dies (the fork happens on a locked thread that never exits).
func workerProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// setSubreaper makes orphaned descendants of workers prefork's children, so that
// prefork reaps them and a stop can wait for them, as pid 1 would.
func setSubreaper() error {
	const prSetChildSubreaper = 36
	_, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
	if e != 0 {
		return os.NewSyscallError("prctl", e)
	}
	return nil
}

// setPdeathsig re-arms the parent-death signal in the shim after a credential
// change cleared it; the caller must be locked to its OS thread.
func setPdeathsig() error {
	_, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0)
	if e != 0 {
		return os.NewSyscallError("prctl", e)
	}
	return nil
}

// selfExe is prefork's own binary, even if it was replaced on disk since.
func selfExe() (string, error) { return "/proc/self/exe", nil }

// monotonicNow reads CLOCK_MONOTONIC.
func monotonicNow() time.Duration {
	var ts syscall.Timespec
	syscall.Syscall(syscall.SYS_CLOCK_GETTIME, 1, uintptr(unsafe.Pointer(&ts)), 0)
	return time.Duration(ts.Nano())
}

// ownChildren lists prefork's child processes as the kernel keeps them
// (/proc/self/task/*/children): after the last worker, descendants that left
// their worker's process group and were reparented to prefork, the subreaper.
func ownChildren() []int {
	files, _ := filepath.Glob("/proc/self/task/*/children")
	var pids []int
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, w := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(w); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}
