//go:build linux || darwin

// This file holds prefork's end of one worker's Node channel: the
// socket pair, the reader goroutine that splits lines and matches descriptors
// to NODE_HANDLE lines, NODE_HANDLE_ACK/NACK bookkeeping, and the ordered writer
// queue every sender shares. The codec is in codec.go.

package nodecluster

import (
	"errors"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/prefork/prefork/internal/rrwire"
)

// outLine is a line waiting for the channel to take it, with the descriptor
// that goes with its first byte (owned by the queue: a duplicate), or -1.
type outLine struct {
	b  []byte
	fd int
}

// sentHandle is a handle-bearing line the worker has not acked yet: a newconn
// (seq, for the dispatcher) or a reply that is sent again on a NACK.
type sentHandle struct {
	newconn bool
	seq     uint32
	line    []byte
	fd      int // the descriptor to send again (not owned), for a reply
	tries   int
}

// errBusy says that a line was not sent because the channel cannot take it
// now without queueing; nothing was written.
var errBusy = errors.New("node channel busy")

// errClosed says that the channel is closed.
var errClosed = errors.New("node channel closed")

// channel is prefork's end of one worker's channel.
type channel struct {
	fd   int
	file *os.File
	rc   syscall.RawConn

	// handle is called on the reader goroutine for every message, with the
	// descriptor that came with a NODE_HANDLE line (the handler owns it) or -1;
	// m is reused for the next line, so the handler must not keep it.
	handle func(m *msg, fd int)
	// refused is called (reader goroutine, outside the write lock) when the
	// worker NACKs a newconn: it did not take the connection. idle: that was
	// the last newconn in flight and the owner asked to hear of it (watchIdle).
	refused func(seq uint32, idle bool)
	// closed is called once, on the reader goroutine, when the channel ends:
	// err is nil for end of file.
	closed func(err error)

	// The write lock. The socket is written by the owner (replies), the rr
	// dispatcher's thread (newconn), the reader (handle acks) and a flusher;
	// the lock keeps their lines whole and in wire order, and with them the
	// handle-bearing lines awaiting an ack and the count of newconns in flight.
	mu        sync.Mutex
	shut      bool
	out       []outLine // lines waiting to be written, in order
	flushing  bool      // a goroutine is writing out
	sent      []sentHandle
	scratch   []byte
	oob       [64]byte
	inflight  int    // newconns the worker has not answered (accepted or not)
	handed    uint64 // newconns sent, ever
	watchIdle bool   // report once when inflight falls to 0

	// reader state, reader goroutine only
	rbuf    []byte
	partial []byte
	roob    []byte
	fds     []int // descriptors received and not yet matched with their line
	msg     msg   // the line being handled: the handler does not keep it
}

// NewPair returns a connected unix stream socket pair, both ends
// close-on-exec: prefork keeps master, child becomes NODE_CHANNEL_FD in the worker.
func NewPair() (master, child int, err error) { return rrwire.SocketPair(syscall.SOCK_STREAM) }

// newChannel takes ownership of fd (prefork's end of the pair) and starts
// reading it. The callbacks must be set on c by the caller before start.
func newChannel(fd int, name string) (*channel, error) {
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	c := &channel{fd: fd, file: os.NewFile(uintptr(fd), name),
		rbuf: make([]byte, 64<<10), roob: make([]byte, syscall.CmsgSpace(8*4))}
	var err error
	if c.rc, err = c.file.SyscallConn(); err != nil {
		c.file.Close()
		return nil, err
	}
	return c, nil
}

// start runs the reader goroutine.
func (c *channel) start() { go c.readLoop() }

// close shuts the channel: the worker sees end of file. Idempotent.
func (c *channel) close() {
	c.mu.Lock()
	if !c.shut {
		c.shut = true
		syscall.Shutdown(c.fd, syscall.SHUT_RDWR)
		c.file.SetReadDeadline(time.Now())
		c.file.SetWriteDeadline(time.Now())
	}
	c.mu.Unlock()
}

func (c *channel) readLoop() {
	var err error
	rerr := c.rc.Read(func(fd uintptr) bool {
		for {
			n, oobn, _, e := rrwire.Recv(int(fd), c.rbuf, c.roob, true)
			switch {
			case e == syscall.EAGAIN:
				return false
			case e != nil:
				err = os.NewSyscallError("recvmsg", e)
				return true
			}
			if oobn > 0 {
				c.takeRights(c.roob[:oobn])
			}
			if n == 0 {
				return true // end of file
			}
			if err = c.lines(c.rbuf[:n]); err != nil {
				return true
			}
			c.dropStrayFds()
		}
	})
	if err == nil && rerr != nil && !errors.Is(rerr, os.ErrDeadlineExceeded) && !errors.Is(rerr, os.ErrClosed) {
		err = rerr
	}
	c.mu.Lock()
	c.shut = true
	c.dropOutLocked()
	c.mu.Unlock()
	for _, fd := range c.fds {
		syscall.Close(fd)
	}
	c.fds = nil
	if c.closed != nil {
		c.closed(err)
	}
	c.file.Close()
}

// takeRights queues the descriptors of a control message; each belongs to the
// next NODE_HANDLE line, in order (a descriptor arrives with its line's first byte).
func (c *channel) takeRights(oob []byte) { c.fds = rrwire.Rights(oob, c.fds) }

// line handles one complete line.
func (c *channel) line(line []byte) {
	m := &c.msg // one per channel, not a heap msg per line (two per rr connection)
	if !parseLine(line, m) {
		return // a user message that is not an object
	}
	switch m.Cmd {
	case "NODE_HANDLE_ACK":
		c.handleAcked(false)
		return
	case "NODE_HANDLE_NACK":
		c.handleAcked(true)
		return
	case "NODE_HANDLE":
		// A handle the worker sends (process.send(m, handle)): ack it as Node
		// does, or the worker queues everything it sends later.
		fd := -1
		if len(c.fds) > 0 {
			fd = c.fds[0]
			c.fds = c.fds[:copy(c.fds, c.fds[1:])]
			c.send([]byte(`{"cmd":"NODE_HANDLE_ACK"}`+"\n"), -1)
		} else {
			c.send([]byte(`{"cmd":"NODE_HANDLE_NACK"}`+"\n"), -1)
			return
		}
		var inner msg
		if len(m.Msg) == 0 || !parseLine(m.Msg, &inner) {
			inner = msg{}
		}
		if c.handle != nil {
			c.handle(&inner, fd)
		} else {
			syscall.Close(fd)
		}
		return
	}
	if c.handle != nil {
		c.handle(m, -1)
	}
}

// handleAcked takes the oldest handle-bearing line off the unacked list; on a
// NACK a reply is sent again (at most 3 times, as Node does) and a newconn is
// reported refused.
func (c *channel) handleAcked(nack bool) {
	c.mu.Lock()
	if len(c.sent) == 0 {
		c.mu.Unlock()
		return
	}
	s := c.sent[0]
	c.sent = c.sent[:copy(c.sent, c.sent[1:])]
	idle := nack && s.newconn && c.answeredLocked()
	c.mu.Unlock()
	if !nack {
		return
	}
	if s.newconn {
		if c.refused != nil {
			c.refused(s.seq, idle)
		}
		return
	}
	if s.tries < 3 {
		c.mu.Lock()
		c.writeLocked(s.line, s.fd, true)
		c.sent = append(c.sent, sentHandle{line: s.line, fd: s.fd, tries: s.tries + 1})
		c.mu.Unlock()
	}
}

// send writes one line (ending in '\n') with an optional descriptor, queueing
// what the channel cannot take now. fd is not consumed: the caller keeps it.
func (c *channel) send(line []byte, fd int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.shut {
		return errClosed
	}
	if fd >= 0 {
		c.sent = append(c.sent, sentHandle{line: line, fd: fd})
	}
	return c.writeLocked(line, fd, true)
}

// sendNewconn hands connection conn to the worker under seq with its server's
// key, without blocking and without queueing: errBusy when the channel
// cannot take it at once (nothing was sent). keyJSON is the key as a JSON string.
func (c *channel) sendNewconn(keyJSON []byte, seq uint32, conn int, setNonblock bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.shut {
		return errClosed
	}
	if len(c.out) > 0 {
		return errBusy
	}
	b := append(c.scratch[:0], `{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"newconn","key":`...)
	b = append(b, keyJSON...)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, uint64(seq), 10)
	b = append(b, "}}\n"...)
	c.scratch = b
	if setNonblock {
		if err := setNonblockFd(conn); err != nil {
			return err
		}
	}
	if err := c.writeLocked(b, conn, false); err != nil {
		return err
	}
	c.sent = append(c.sent, sentHandle{newconn: true, seq: seq})
	c.inflight++
	c.handed++
	return nil
}

// answered counts the worker's answer to a newconn; it reports whether that
// was the last one in flight and the owner asked to hear of it (newconns).
func (c *channel) answered() (idle bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.answeredLocked()
}

func (c *channel) answeredLocked() bool {
	if c.inflight > 0 {
		c.inflight--
	}
	if c.inflight > 0 || !c.watchIdle {
		return false
	}
	c.watchIdle = false
	return true
}

// newconns reports how many newconns are in flight and how many were ever
// sent; with watch, when some are in flight, the reader reports the moment
// the last is answered (answered, refused), once.
func (c *channel) newconns(watch bool) (inflight int, handed uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.watchIdle = watch && c.inflight > 0
	return c.inflight, c.handed
}

// writeLocked writes b with fd in SCM_RIGHTS on its first byte. What is not
// written at once is queued (with a duplicate of fd) and written by a flusher
// goroutine; with mayQueue false, a line of which nothing could be written is
// errBusy instead. b is copied when queued.
func (c *channel) writeLocked(b []byte, fd int, mayQueue bool) error {
	if len(c.out) == 0 {
		n, err := c.sendmsg(b, fd)
		switch {
		case err == nil && n == len(b):
			return nil
		case err == nil: // partial: the descriptor went with the first byte
			c.queueLocked(b[n:], -1)
			return nil
		case err != syscall.EAGAIN:
			return os.NewSyscallError("sendmsg", err)
		case !mayQueue:
			return errBusy
		}
	} else if !mayQueue {
		return errBusy
	}
	dfd := -1
	if fd >= 0 {
		var err error
		if dfd, err = dupCloexec(fd); err != nil {
			return err
		}
	}
	c.queueLocked(b, dfd)
	return nil
}

func (c *channel) queueLocked(b []byte, fd int) {
	c.out = append(c.out, outLine{b: append([]byte(nil), b...), fd: fd})
	if !c.flushing {
		c.flushing = true
		go c.flush()
	}
}

// flush writes the queue out as the channel takes it.
func (c *channel) flush() {
	c.rc.Write(func(fd uintptr) bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for len(c.out) > 0 && !c.shut {
			o := &c.out[0]
			n, err := c.sendmsg(o.b, o.fd)
			if err == syscall.EAGAIN {
				return false
			}
			if o.fd >= 0 {
				syscall.Close(o.fd) // sent with the first byte, or never will be
				o.fd = -1
			}
			if err != nil {
				c.shut = true
				break
			}
			if o.b = o.b[n:]; len(o.b) == 0 {
				c.out = c.out[1:]
			}
		}
		if c.shut {
			c.dropOutLocked()
		}
		c.flushing = false
		return true
	})
}

// dropOutLocked discards the queue of a shut channel, closing its descriptors.
func (c *channel) dropOutLocked() {
	for _, o := range c.out {
		if o.fd >= 0 {
			syscall.Close(o.fd)
		}
	}
	c.out = nil
}

// sendmsg is one non-blocking write of b, with fd on its first byte when fd >= 0.
func (c *channel) sendmsg(b []byte, fd int) (int, error) {
	var oob []byte
	if fd >= 0 {
		oob = rrwire.PutRight(c.oob[:], fd)
	}
	for {
		n, err := syscall.SendmsgN(c.fd, b, oob, nil, rrwire.SendFlags)
		if err != syscall.EINTR {
			return n, err
		}
	}
}

// setNonblockFd makes fd non-blocking with one ioctl: Node's libuv does not set
// O_NONBLOCK on descriptors it receives, and blocks in accept or read otherwise.
func setNonblockFd(fd int) error {
	// FIONBIO, which package syscall does not export: <asm-generic/ioctls.h>
	// on Linux (amd64 and arm64 alike), _IOW('f', 126, int) in <sys/filio.h>
	// on macOS.
	fionbio := uintptr(0x5421)
	if runtime.GOOS == "darwin" {
		fionbio = 0x8004667e
	}
	one := 1
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), fionbio, uintptr(unsafe.Pointer(&one))); e != 0 {
		return os.NewSyscallError("ioctl", e)
	}
	return nil
}

// dupCloexec duplicates fd close-on-exec; ForkLock keeps a concurrent fork
// from inheriting it in between.
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

func closeFds(fds []int) {
	for _, fd := range fds {
		syscall.Close(fd)
	}
}
