// This file holds the Linux side of the handoff channel: SOCK_SEQPACKET, and
// descriptors received close-on-exec with MSG_CMSG_CLOEXEC.
package rrwire

import (
	"os"
	"syscall"
)

// SocketType is the type of the handoff socket (fd 3 of an rr worker).
const SocketType = syscall.SOCK_SEQPACKET

// sendFlags keeps a send from blocking its caller or raising SIGPIPE.
const sendFlags = syscall.MSG_DONTWAIT | syscall.MSG_NOSIGNAL

// NewPair returns a connected handoff socket pair, both ends close-on-exec and
// blocking. prefork keeps master; worker becomes fd 3 of the worker process.
// The default socket buffers hold a few hundred handoff messages, more than
// any sensible window.
func NewPair() (master, worker int, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, SocketType|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, -1, os.NewSyscallError("socketpair", err)
	}
	return fds[0], fds[1], nil
}

// Recv reads one message, without blocking if dontWait; descriptors that
// arrive with it are close-on-exec from the start. Errors are raw (EAGAIN
// included).
func Recv(fd int, p, oob []byte, dontWait bool) (n, oobn, flags int, err error) {
	f := syscall.MSG_CMSG_CLOEXEC
	if dontWait {
		f |= syscall.MSG_DONTWAIT
	}
	for {
		n, oobn, flags, _, err = syscall.Recvmsg(fd, p, oob, f)
		if err != syscall.EINTR {
			return n, oobn, flags, err
		}
	}
}

// WouldBlock reports whether a send failed only because the peer's queue is
// full for now.
func WouldBlock(err error) bool {
	return err == syscall.EAGAIN
}
