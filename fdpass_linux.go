// This file holds the Linux side of rr mode's descriptor handling, given to the
// dispatcher (internal/rr) at its start as rrSys: accept4 without allocation,
// a close that does not block, and F_DUPFD_CLOEXEC.
package main

import (
	"os"
	"syscall"
)

// acceptConn accepts one connection from the non-blocking listener lfd and
// returns it blocking and close-on-exec. Errors are raw syscall.Errno values
// (EAGAIN included).
func acceptConn(lfd int) (int, error) { return accept4(lfd, syscall.SOCK_CLOEXEC) }

// acceptConnNonblock is acceptConn for connections that go to Node workers:
// non-blocking from the start (accept4 with SOCK_NONBLOCK), which saves the
// ioctl per connection.
func acceptConnNonblock(lfd int) (int, error) {
	return accept4(lfd, syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK)
}

// accept4 asks for no peer address, so it allocates nothing, and never
// blocking, it enters the kernel without telling the Go scheduler (RawSyscall).
func accept4(lfd, flags int) (int, error) {
	for {
		r, _, e := syscall.RawSyscall6(syscall.SYS_ACCEPT4, uintptr(lfd), 0, 0, uintptr(flags), 0, 0)
		switch e {
		case 0:
			return int(r), nil
		case syscall.EINTR:
			continue
		}
		return -1, e
	}
}

// closeConn closes prefork's copy of a connection: never the last reference
// while a worker holds it, and without SO_LINGER at most the start of a
// close, so it does not block (RawSyscall, as acceptConn).
func closeConn(fd int) {
	syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(fd), 0, 0)
}

// dupCloexec duplicates fd atomically close-on-exec (F_DUPFD_CLOEXEC).
func dupCloexec(fd int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 0)
	if e != 0 {
		return -1, os.NewSyscallError("fcntl", e)
	}
	return int(r), nil
}
