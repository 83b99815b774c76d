// This file holds the macOS side of rr mode's descriptor handling, given to the
// dispatcher (internal/rr) at its start as rrSys: accept and dup with
// close-on-exec set under syscall.ForkLock, as Go's
// net/unixsock_readmsg_cloexec.go does.
package main

import (
	"os"
	"syscall"
)

// acceptConn accepts one connection from the non-blocking listener lfd and
// returns it blocking and close-on-exec (BSD accept inherits O_NONBLOCK from the
// listener, Linux does not). Errors are raw syscall.Errno values.
func acceptConn(lfd int) (int, error) {
	fd, err := acceptCloexec(lfd)
	if err != nil {
		return -1, err
	}
	if err := syscall.SetNonblock(fd, false); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

// acceptConnNonblock is acceptConn for connections that go to Node workers:
// they stay non-blocking, as BSD accept makes them from the listener.
func acceptConnNonblock(lfd int) (int, error) { return acceptCloexec(lfd) }

// acceptCloexec accepts one connection, close-on-exec under ForkLock.
func acceptCloexec(lfd int) (int, error) {
	for {
		syscall.ForkLock.RLock()
		fd, _, err := syscall.Accept(lfd)
		if err == nil {
			syscall.CloseOnExec(fd)
		}
		syscall.ForkLock.RUnlock()
		if err != syscall.EINTR {
			if err != nil {
				return -1, err
			}
			return fd, nil
		}
	}
}

// closeConn closes prefork's copy of a connection.
func closeConn(fd int) { syscall.Close(fd) }

// dupCloexec duplicates fd close-on-exec; ForkLock keeps a concurrent fork from
// inheriting it in between.
func dupCloexec(fd int) (int, error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	nfd, err := syscall.Dup(fd)
	if err != nil {
		return -1, os.NewSyscallError("dup", err)
	}
	syscall.CloseOnExec(nfd)
	return nfd, nil
}
