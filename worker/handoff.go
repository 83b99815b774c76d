//go:build unix

// This file implements the worker side of prefork's rr handoff protocol: a
// reader that receives connections on fd 3, acks them at once, and delivers each
// to the net.Listener of its listener index.
package worker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// maxBatch is the most connections received, and acked in one message, at once.
const maxBatch = 64

// handoff is the reader of the handoff channel and the listeners it feeds.
type handoff struct {
	file *os.File
	rc   syscall.RawConn
	ls   []*rrListener
	done chan struct{} // closed when the reader stops; err says why

	mu   sync.Mutex
	open int  // listeners not closed yet
	stop bool // every listener is closed
	err  error
}

// rrListener is one prefork listener in rr mode.
type rrListener struct {
	h      *handoff
	addr   rrAddr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

// rrAddr is a listener's address in rr mode: its name in LISTEN_FDNAMES (the
// worker never sees the socket itself).
type rrAddr string

func (a rrAddr) Network() string { return "prefork-rr" }
func (a rrAddr) String() string  { return string(a) }

// newHandoff starts reading connections from the handoff channel fd (the
// worker end of prefork's socket pair) for one listener per name.
func newHandoff(fd int, names []string) ([]net.Listener, error) {
	typ, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("worker: fd %d is not prefork's handoff socket: %w", fd, os.NewSyscallError("getsockopt", err))
	}
	if typ != handoffType {
		return nil, fmt.Errorf("worker: fd %d is not prefork's handoff socket (socket type %d)", fd, typ)
	}
	syscall.CloseOnExec(fd)
	if err := syscall.SetNonblock(fd, true); err != nil {
		return nil, os.NewSyscallError("fcntl", err)
	}
	h := &handoff{file: os.NewFile(uintptr(fd), "prefork-handoff"), done: make(chan struct{}), open: len(names)}
	if h.rc, err = h.file.SyscallConn(); err != nil {
		h.file.Close()
		return nil, err
	}
	ls := make([]net.Listener, len(names))
	for i, name := range names {
		l := &rrListener{h: h, addr: rrAddr(name), conns: make(chan net.Conn, maxBatch), closed: make(chan struct{})}
		h.ls = append(h.ls, l)
		ls[i] = l
	}
	go h.run()
	return ls, nil
}

// received is one handoff message.
type received struct {
	seq   uint32
	index uint32
	fd    int
}

// run receives batches of connections, acks each batch in one message, and
// delivers them. It stops when every listener is closed or the channel fails,
// and closes the channel then, so that prefork hands what was not acked to
// another worker.
func (h *handoff) run() {
	defer close(h.done)
	defer h.file.Close()
	var (
		batch []received
		buf   = make([]byte, 16)
		oob   = make([]byte, syscall.CmsgSpace(4*4))
		acks  = make([]byte, 0, 4*maxBatch)
		bad   error
	)
	receive := func(fd uintptr) bool {
		for len(batch) < maxBatch {
			n, oobn, flags, err := recvNoWait(int(fd), buf, oob)
			if err == syscall.EAGAIN {
				return len(batch) > 0
			}
			if err != nil {
				bad = os.NewSyscallError("recvmsg", err)
				return true
			}
			m, err := h.parse(buf[:n], oob[:oobn], flags)
			if err != nil {
				bad = err
				return true
			}
			batch = append(batch, m)
		}
		return true
	}
	sendAcks := func(fd uintptr) bool {
		_, err := syscall.Write(int(fd), acks)
		if err == syscall.EAGAIN {
			return false
		}
		if err != nil {
			bad = os.NewSyscallError("write", err)
		}
		return true
	}
	for bad == nil {
		batch, acks = batch[:0], acks[:0]
		if err := h.rc.Read(receive); err != nil {
			bad = err
		}
		for _, m := range batch {
			acks = binary.BigEndian.AppendUint32(acks, m.seq)
		}
		if len(acks) > 0 {
			if err := h.rc.Write(sendAcks); err != nil && bad == nil {
				bad = err
			}
		}
		for _, m := range batch {
			h.deliver(m)
		}
	}
	h.mu.Lock()
	if h.stop {
		bad = net.ErrClosed
	}
	h.err = bad
	h.mu.Unlock()
}

// parse checks one handoff message: 8 bytes and exactly one descriptor, for a
// listener that exists. Descriptors of a bad message are closed.
func (h *handoff) parse(p, oob []byte, flags int) (received, error) {
	fds := rights(oob)
	switch {
	case len(p) == 0 && len(fds) == 0:
		return received{}, errors.New("worker: prefork closed the handoff channel")
	case flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0, len(p) != 8, len(fds) != 1:
		for _, fd := range fds {
			syscall.Close(fd)
		}
		return received{}, fmt.Errorf("worker: bad handoff message: %d bytes, %d descriptors", len(p), len(fds))
	}
	m := received{binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:]), fds[0]}
	if int(m.index) >= len(h.ls) {
		syscall.Close(m.fd)
		return received{}, fmt.Errorf("worker: handoff for listener %d, but LISTEN_FDNAMES names %d", m.index, len(h.ls))
	}
	return m, nil
}

// deliver turns a received descriptor into a net.Conn and queues it on its
// listener, waiting while that listener's queue is full (prefork's window then
// fills up and it stops sending). A closed listener's connections are closed.
func (h *handoff) deliver(m received) {
	f := os.NewFile(uintptr(m.fd), "prefork-conn")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return
	}
	l := h.ls[m.index]
	select {
	case l.conns <- c:
	case <-l.closed:
		c.Close()
	}
}

// rights returns the descriptors carried by a control message.
func rights(oob []byte) []int {
	msgs, _ := syscall.ParseSocketControlMessage(oob)
	var fds []int
	for i := range msgs {
		f, _ := syscall.ParseUnixRights(&msgs[i])
		fds = append(fds, f...)
	}
	return fds
}

// Accept waits for the next connection prefork hands to this listener.
func (l *rrListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, l.opError(net.ErrClosed)
	case <-l.h.done:
		select {
		case c := <-l.conns:
			return c, nil
		default:
		}
		l.h.mu.Lock()
		err := l.h.err
		l.h.mu.Unlock()
		return nil, l.opError(err)
	}
}

func (l *rrListener) opError(err error) error {
	return &net.OpError{Op: "accept", Net: l.addr.Network(), Addr: l.addr, Err: err}
}

// Close stops this listener; connections queued on it are closed. Closing the
// last one stops the reader and closes the handoff channel.
func (l *rrListener) Close() error {
	first := false
	l.once.Do(func() {
		first = true
		close(l.closed)
		h := l.h
		h.mu.Lock()
		h.open--
		last := h.open == 0
		if last {
			h.stop = true
			h.file.SetDeadline(time.Now()) // wakes the reader, in a read or an ack
		}
		h.mu.Unlock()
		for len(l.conns) > 0 {
			select {
			case c := <-l.conns:
				c.Close()
			default:
			}
		}
	})
	if !first {
		return l.opError(net.ErrClosed)
	}
	return nil
}

// Addr returns the listener's name from LISTEN_FDNAMES.
func (l *rrListener) Addr() net.Addr { return l.addr }
