// This file implements the rr handoff channel on macOS: a SOCK_DGRAM socket pair
// (no SOCK_SEQPACKET for unix sockets there) with close-on-exec set under
// syscall.ForkLock, as Go's net/unixsock_readmsg_cloexec.go does.
package main

import (
	"os"
	"syscall"
)

// sendFlags keeps a handoff from blocking the dispatcher; the Go runtime turns
// SIGPIPE on such a socket into EPIPE.
const sendFlags = syscall.MSG_DONTWAIT

// handoffBuf is the socket buffer size of both ends: the BSD defaults for unix
// datagram sockets (2 KiB to send, 4 KiB to receive) hold only a few messages.
const handoffBuf = 256 << 10

// newHandoffPair returns a connected message-oriented unix socket pair
// (SOCK_DGRAM), both ends close-on-exec and blocking. prefork keeps master;
// worker becomes fd 3 of the worker process.
func newHandoffPair() (master, worker int, err error) {
	syscall.ForkLock.RLock()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_DGRAM, 0)
	if err == nil {
		syscall.CloseOnExec(fds[0])
		syscall.CloseOnExec(fds[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return -1, -1, os.NewSyscallError("socketpair", err)
	}
	for _, fd := range fds {
		for _, opt := range []int{syscall.SO_SNDBUF, syscall.SO_RCVBUF} {
			if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, opt, handoffBuf); err != nil {
				syscall.Close(fds[0])
				syscall.Close(fds[1])
				return -1, -1, os.NewSyscallError("setsockopt", err)
			}
		}
	}
	return fds[0], fds[1], nil
}

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

// recvNoWait reads one message without blocking; descriptors that arrive with it
// are made close-on-exec before any fork can see them. Errors are raw.
func recvNoWait(fd int, p, oob []byte) (n, oobn, flags int, err error) {
	for {
		syscall.ForkLock.RLock()
		n, oobn, flags, _, err = syscall.Recvmsg(fd, p, oob, syscall.MSG_DONTWAIT)
		if err == nil && oobn > 0 {
			cloexecRights(oob[:oobn])
		}
		syscall.ForkLock.RUnlock()
		if err != syscall.EINTR {
			return n, oobn, flags, err
		}
	}
}

// cloexecRights sets close-on-exec on every descriptor in a control message.
func cloexecRights(oob []byte) {
	msgs, _ := syscall.ParseSocketControlMessage(oob)
	for i := range msgs {
		fds, _ := syscall.ParseUnixRights(&msgs[i])
		for _, fd := range fds {
			syscall.CloseOnExec(fd)
		}
	}
}

// sendWouldBlock reports whether a send failed only because the peer's queue is
// full for now: a full unix datagram queue gives ENOBUFS on macOS.
func sendWouldBlock(err error) bool {
	return err == syscall.EAGAIN || err == syscall.ENOBUFS
}

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
