// This file holds the macOS side of the handoff channel: SOCK_DGRAM (no
// SOCK_SEQPACKET for unix sockets there), with close-on-exec set under
// syscall.ForkLock, as Go's net/unixsock_readmsg_cloexec.go does.
package rrwire

import (
	"os"
	"syscall"
)

// SocketType is the type of the handoff socket (fd 3 of an rr worker).
const SocketType = syscall.SOCK_DGRAM

// SendFlags keeps a send (the handoff, and prefork's Node channel) from
// blocking its caller; the Go runtime turns SIGPIPE on such a socket into
// EPIPE.
const SendFlags = syscall.MSG_DONTWAIT

// bufSize is the socket buffer size of both ends: the BSD defaults for unix
// datagram sockets (2 KiB to send, 4 KiB to receive) hold only a few messages.
const bufSize = 256 << 10

// NewPair returns a connected handoff socket pair, both ends close-on-exec and
// blocking. prefork keeps master; worker becomes fd 3 of the worker process.
func NewPair() (master, worker int, err error) {
	master, worker, err = SocketPair(SocketType)
	if err != nil {
		return -1, -1, err
	}
	for _, fd := range []int{master, worker} {
		for _, opt := range []int{syscall.SO_SNDBUF, syscall.SO_RCVBUF} {
			if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, opt, bufSize); err != nil {
				syscall.Close(master)
				syscall.Close(worker)
				return -1, -1, os.NewSyscallError("setsockopt", err)
			}
		}
	}
	return master, worker, nil
}

// SocketPair returns a connected unix socket pair of type typ, both ends
// close-on-exec and blocking: NewPair's, for other channels (the Node one is
// SOCK_STREAM).
func SocketPair(typ int) (a, b int, err error) {
	syscall.ForkLock.RLock()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, typ, 0)
	if err == nil {
		syscall.CloseOnExec(fds[0])
		syscall.CloseOnExec(fds[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return -1, -1, os.NewSyscallError("socketpair", err)
	}
	return fds[0], fds[1], nil
}

// Recv reads one message, without blocking if dontWait; descriptors that
// arrive with it are made close-on-exec before any fork can see them. A
// blocking Recv waits in select(2), not under ForkLock. Errors are raw (EAGAIN
// included).
func Recv(fd int, p, oob []byte, dontWait bool) (n, oobn, flags int, err error) {
	for {
		syscall.ForkLock.RLock()
		n, oobn, flags, _, err = syscall.Recvmsg(fd, p, oob, syscall.MSG_DONTWAIT)
		if err == nil && oobn > 0 {
			cloexecRights(oob[:oobn])
		}
		syscall.ForkLock.RUnlock()
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN && !dontWait:
			var set syscall.FdSet
			set.Bits[fd/32] |= 1 << (uint(fd) % 32)
			if err := syscall.Select(fd+1, &set, nil, nil, nil); err != nil && err != syscall.EINTR {
				return 0, 0, 0, err
			}
			continue
		}
		return n, oobn, flags, err
	}
}

// cloexecRights sets close-on-exec on every descriptor in a control message.
func cloexecRights(oob []byte) {
	var buf [8]int
	for _, fd := range Rights(oob, buf[:0]) {
		syscall.CloseOnExec(fd)
	}
}

// WouldBlock reports whether a send failed only because the peer's queue is
// full for now: a full unix datagram queue gives ENOBUFS on macOS.
func WouldBlock(err error) bool {
	return err == syscall.EAGAIN || err == syscall.ENOBUFS
}

// Batch is room to read messages of up to size bytes; on macOS (no recvmmsg)
// a Recv reads one.
type Batch struct {
	buf, oob []byte
	n, oobn  int
	flags    int
}

// NewBatch makes room for messages of up to size bytes.
func NewBatch(n, size int) *Batch {
	return &Batch{buf: make([]byte, size), oob: make([]byte, OOBSpace)}
}

// Recv reads one message waiting on fd without blocking; descriptors are made
// close-on-exec. It returns 1, or a raw error, EAGAIN when none was waiting.
func (b *Batch) Recv(fd int) (int, error) {
	var err error
	b.n, b.oobn, b.flags, err = Recv(fd, b.buf, b.oob, true)
	if err != nil {
		return 0, err
	}
	return 1, nil
}

// Cap is the most messages one Recv reads: one on macOS, so a full Recv says
// nothing about what is left.
func (b *Batch) Cap() int { return 1 }

// Msg returns the message of the last Recv.
func (b *Batch) Msg(i int) (p, oob []byte, flags int) {
	return b.buf[:b.n], b.oob[:b.oobn], b.flags
}
