// This file holds the Linux side of the handoff channel: SOCK_SEQPACKET, and
// descriptors received close-on-exec with MSG_CMSG_CLOEXEC.
package rrwire

import (
	"os"
	"syscall"
	"unsafe"
)

// SocketType is the type of the handoff socket (fd 3 of an rr worker).
const SocketType = syscall.SOCK_SEQPACKET

// SendFlags keeps a send (the handoff, and prefork's Node channel) from
// blocking its caller or raising SIGPIPE.
const SendFlags = syscall.MSG_DONTWAIT | syscall.MSG_NOSIGNAL

// NewPair returns a connected handoff socket pair, both ends close-on-exec and
// blocking. prefork keeps master; worker becomes fd 3 of the worker process.
// The default socket buffers hold a few hundred handoff messages, more than
// any sensible window.
func NewPair() (master, worker int, err error) { return SocketPair(SocketType) }

// SocketPair returns a connected unix socket pair of type typ, both ends
// close-on-exec (atomically) and blocking: NewPair's, for other channels (the
// Node one is SOCK_STREAM).
func SocketPair(typ int) (a, b int, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, typ|syscall.SOCK_CLOEXEC, 0)
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

// mmsghdr is struct mmsghdr of recvmmsg(2).
type mmsghdr struct {
	hdr syscall.Msghdr
	n   uint32
}

// Batch is room to read several messages of up to size bytes in one call
// (recvmmsg), each with room to notice a few descriptors.
type Batch struct {
	hdrs []mmsghdr
	iovs []syscall.Iovec
	buf  []byte
	oob  []byte
	size int
}

// NewBatch makes room for n messages of up to size bytes.
func NewBatch(n, size int) *Batch {
	b := &Batch{hdrs: make([]mmsghdr, n), iovs: make([]syscall.Iovec, n),
		buf: make([]byte, n*size), oob: make([]byte, n*OOBSpace), size: size}
	for i := range b.hdrs {
		b.iovs[i].Base = &b.buf[i*size]
		b.hdrs[i].hdr.Iov = &b.iovs[i]
		b.hdrs[i].hdr.Iovlen = 1
		b.hdrs[i].hdr.Control = &b.oob[i*OOBSpace]
	}
	return b
}

// Recv reads the messages waiting on fd, up to the batch's room, without
// blocking and in one system call; descriptors arrive close-on-exec. It
// returns how many were read (a short count: the queue is empty now) or a raw
// error, EAGAIN when none was waiting.
func (b *Batch) Recv(fd int) (int, error) {
	for i := range b.hdrs {
		b.iovs[i].SetLen(b.size)
		b.hdrs[i].hdr.SetControllen(OOBSpace)
		b.hdrs[i].hdr.Flags = 0
		b.hdrs[i].n = 0
	}
	for {
		r, _, e := syscall.RawSyscall6(syscall.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.hdrs[0])),
			uintptr(len(b.hdrs)), syscall.MSG_DONTWAIT|syscall.MSG_CMSG_CLOEXEC, 0, 0)
		switch e {
		case 0:
			return int(r), nil
		case syscall.EINTR:
			continue
		}
		return 0, e
	}
}

// Cap is the most messages one Recv reads: a Recv that returns fewer found
// the queue empty.
func (b *Batch) Cap() int { return len(b.hdrs) }

// Msg returns message i of the last Recv: its bytes, its control message, and
// its recvmsg flags.
func (b *Batch) Msg(i int) (p, oob []byte, flags int) {
	h := &b.hdrs[i]
	return b.buf[i*b.size : i*b.size+int(h.n)], b.oob[i*OOBSpace : i*OOBSpace+int(h.hdr.Controllen)], int(h.hdr.Flags)
}
