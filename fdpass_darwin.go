// This file holds the macOS side of the rr dispatcher's descriptor handling:
// accept and dup with close-on-exec set under syscall.ForkLock, as Go's
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
	for {
		syscall.ForkLock.RLock()
		fd, _, err := syscall.Accept(lfd)
		if err == nil {
			syscall.CloseOnExec(fd)
		}
		syscall.ForkLock.RUnlock()
		switch err {
		case nil:
			if err := syscall.SetNonblock(fd, false); err != nil {
				syscall.Close(fd)
				return -1, err
			}
			return fd, nil
		case syscall.EINTR:
			continue
		}
		return -1, err
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
