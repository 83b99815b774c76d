// This file implements the rr handoff channel on Linux: a SOCK_SEQPACKET socket
// pair, accept4 without allocation, and receiving acks with MSG_CMSG_CLOEXEC.
package main

import (
	"os"
	"syscall"
)

// sendFlags keeps a handoff from blocking the dispatcher or raising SIGPIPE.
const sendFlags = syscall.MSG_DONTWAIT | syscall.MSG_NOSIGNAL

// newHandoffPair returns a connected message-oriented unix socket pair
// (SOCK_SEQPACKET), both ends close-on-exec and blocking. prefork keeps master;
// worker becomes fd 3 of the worker process. The default socket buffers hold a
// few hundred handoff messages, more than any sensible window.
func newHandoffPair() (master, worker int, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, -1, os.NewSyscallError("socketpair", err)
	}
	return fds[0], fds[1], nil
}

// acceptConn accepts one connection from the non-blocking listener lfd and
// returns it blocking and close-on-exec. It asks for no peer address, so it
// allocates nothing. Errors are raw syscall.Errno values (EAGAIN included).
func acceptConn(lfd int) (int, error) {
	for {
		r, _, e := syscall.Syscall6(syscall.SYS_ACCEPT4, uintptr(lfd), 0, 0, syscall.SOCK_CLOEXEC, 0, 0)
		switch e {
		case 0:
			return int(r), nil
		case syscall.EINTR:
			continue
		}
		return -1, e
	}
}

// recvNoWait reads one message without blocking; descriptors that arrive with it
// are close-on-exec from the start (MSG_CMSG_CLOEXEC). Errors are raw.
func recvNoWait(fd int, p, oob []byte) (n, oobn, flags int, err error) {
	for {
		n, oobn, flags, _, err = syscall.Recvmsg(fd, p, oob, syscall.MSG_DONTWAIT|syscall.MSG_CMSG_CLOEXEC)
		if err != syscall.EINTR {
			return n, oobn, flags, err
		}
	}
}

// sendWouldBlock reports whether a send failed only because the peer's queue is
// full for now.
func sendWouldBlock(err error) bool {
	return err == syscall.EAGAIN
}

// dupCloexec duplicates fd atomically close-on-exec (F_DUPFD_CLOEXEC).
func dupCloexec(fd int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 0)
	if e != 0 {
		return -1, os.NewSyscallError("fcntl", e)
	}
	return int(r), nil
}
