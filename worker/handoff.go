//go:build unix

// This file implements the worker side of prefork's rr handoff protocol: a
// reader that receives connections on fd 3 and queues each on the net.Listener
// of its listener index; Accept acks a connection as it takes it, before the
// connection is read.
//
// Acking at Accept rather than on receipt means the package never holds an
// acked connection that nobody will serve: what sits in a queue is unacked, so
// when the listeners close or the worker dies, prefork still has its copy and
// hands it to another worker. It also makes a worker that is slow to Accept
// fill its window, so prefork sends the next connections elsewhere.
package worker

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/prefork/prefork/internal/rrwire"
)

// maxBatch is the most connections received at once, and queued per listener.
const maxBatch = 64

// errNoHandoff says that rr mode does not run on this system.
var errNoHandoff = errors.New("worker: prefork's rr mode needs Linux or macOS, not " + runtime.GOOS)

// errShut says the handoff channel is closed: a connection taken from a queue
// now can no longer be acked, and prefork gives it to another worker.
var errShut = errors.New("worker: handoff channel closed")

// handoff is the reader of the handoff channel and the listeners it feeds.
type handoff struct {
	file *os.File
	rc   syscall.RawConn
	ls   []*rrListener
	done chan struct{} // closed when the reader stops; err says why

	mu   sync.Mutex // guards the fields below, and every ack write
	open int        // listeners not closed yet; none: every listener is closed
	shut bool       // fd 3 is closed
	err  error
	ack  [rrwire.AckLen]byte
	werr error              // the last ack write's result
	send func(uintptr) bool // writes ack, bound once so Accept allocates no closure
}

// rrListener is one prefork listener in rr mode.
type rrListener struct {
	h      *handoff
	addr   rrAddr
	conns  chan received // received, not acked yet
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
	if rrwire.SocketType < 0 {
		return nil, errNoHandoff
	}
	typ, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("worker: fd %d is not prefork's handoff socket: %w", fd, os.NewSyscallError("getsockopt", err))
	}
	if typ != rrwire.SocketType {
		return nil, fmt.Errorf("worker: fd %d is not prefork's handoff socket (socket type %d)", fd, typ)
	}
	syscall.CloseOnExec(fd)
	if err := syscall.SetNonblock(fd, true); err != nil {
		return nil, os.NewSyscallError("fcntl", err)
	}
	h := &handoff{file: os.NewFile(uintptr(fd), "prefork-handoff"), done: make(chan struct{}), open: len(names)}
	h.send = func(fd uintptr) bool {
		_, h.werr = syscall.Write(int(fd), h.ack[:])
		return h.werr != syscall.EAGAIN
	}
	if h.rc, err = h.file.SyscallConn(); err != nil {
		h.file.Close()
		return nil, err
	}
	ls := make([]net.Listener, len(names))
	for i, name := range names {
		l := &rrListener{h: h, addr: rrAddr(name), conns: make(chan received, maxBatch), closed: make(chan struct{})}
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

// run receives batches of connections and queues them. It stops when every
// listener is closed or the channel fails, and then closes the channel, so that
// prefork hands what was not acked to another worker.
func (h *handoff) run() {
	var (
		batch []received
		buf   = make([]byte, 2*rrwire.MsgLen)
		oob   = make([]byte, rrwire.OOBSpace)
		bad   error
	)
	receive := func(fd uintptr) bool {
		for len(batch) < maxBatch {
			n, oobn, flags, err := rrwire.Recv(int(fd), buf, oob, true)
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
	for bad == nil {
		batch = batch[:0]
		if err := h.rc.Read(receive); err != nil {
			bad = err
		}
		for _, m := range batch {
			h.deliver(m)
		}
	}
	h.mu.Lock()
	if h.open == 0 {
		bad = net.ErrClosed
	}
	h.err, h.shut = bad, true
	h.file.Close()
	h.mu.Unlock()
	close(h.done)
	for _, l := range h.ls { // nothing queued can be acked now: prefork keeps those
		l.dropQueued()
	}
}

// parse checks one handoff message: 8 bytes and exactly one descriptor, for a
// listener that exists. Descriptors of a bad message are closed.
func (h *handoff) parse(p, oob []byte, flags int) (received, error) {
	seq, index, fd, err := rrwire.Parse(p, oob, flags)
	switch {
	case err == rrwire.ErrClosed:
		return received{}, errors.New("worker: prefork closed the handoff channel")
	case err != nil:
		return received{}, fmt.Errorf("worker: %w", err)
	case int(index) >= len(h.ls):
		syscall.Close(fd)
		return received{}, fmt.Errorf("worker: handoff for listener %d, but LISTEN_FDNAMES names %d", index, len(h.ls))
	}
	return received{seq, index, fd}, nil
}

// deliver queues a received connection on its listener, waiting while that
// listener's queue is full (prefork's window then fills up and it sends to other
// workers). A closed listener's connections are dropped unacked.
func (h *handoff) deliver(m received) {
	l := h.ls[m.index]
	select {
	case l.conns <- m:
	case <-l.closed:
		syscall.Close(m.fd)
	}
}

// take acks a queued connection and turns it into a net.Conn. Once the channel
// is closed it drops the connection instead: prefork has seen no ack and gives
// it to another worker, so serving it here would serve it twice.
func (h *handoff) take(m received) (net.Conn, error) {
	h.mu.Lock()
	if h.shut {
		h.mu.Unlock()
		syscall.Close(m.fd)
		return nil, errShut
	}
	rrwire.PutAck(h.ack[:], m.seq)
	err := h.rc.Write(h.send)
	if err == nil {
		err = h.werr
	}
	h.mu.Unlock()
	if err != nil {
		syscall.Close(m.fd)
		return nil, err
	}
	return newConn(m.fd)
}

// Accept waits for the next connection prefork hands to this listener and
// acks it.
func (l *rrListener) Accept() (net.Conn, error) {
	for {
		var m received
		select {
		case m = <-l.conns:
		case <-l.closed:
			return nil, l.opError(net.ErrClosed)
		case <-l.h.done:
			l.h.mu.Lock()
			err := l.h.err
			l.h.mu.Unlock()
			return nil, l.opError(err)
		}
		c, err := l.h.take(m)
		if err == nil {
			return c, nil
		}
		// The channel is gone or the descriptor unusable: the connection
		// stays prefork's; wait for the next or for the reader's end.
	}
}

func (l *rrListener) opError(err error) error {
	return &net.OpError{Op: "accept", Net: l.addr.Network(), Addr: l.addr, Err: err}
}

// Close stops this listener; connections queued on it are left to prefork (they
// were never acked). Closing the last one stops the reader and closes the
// handoff channel, and prefork hands every unacked connection to another worker.
func (l *rrListener) Close() error {
	first := false
	l.once.Do(func() {
		first = true
		close(l.closed)
		h := l.h
		h.mu.Lock()
		h.open--
		if h.open == 0 {
			h.file.SetReadDeadline(time.Now()) // wakes the reader
		}
		h.mu.Unlock()
		l.dropQueued()
	})
	if !first {
		return l.opError(net.ErrClosed)
	}
	return nil
}

// dropQueued closes this process's copies of connections never acked.
func (l *rrListener) dropQueued() {
	for {
		select {
		case m := <-l.conns:
			syscall.Close(m.fd)
		default:
			return
		}
	}
}

// Addr returns the listener's name from LISTEN_FDNAMES.
func (l *rrListener) Addr() net.Addr { return l.addr }
