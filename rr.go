//go:build linux || darwin

// This file implements --mode rr: the dispatcher that accepts on prefork's
// listeners and hands each connection to the next ready worker over its handoff
// channel, keeping its own copy until the worker acks it (SPEC §4).
package main

import (
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"
)

// rrDefaultWindow is the default W: connections a worker may hold unacked.
const rrDefaultWindow = 32

// Design. One goroutine per listener accepts through the runtime's poller on the
// raw descriptor (accept4 in a loop until EAGAIN: no net.Conn, no allocation,
// no channel per connection) and hands each connection on itself. One goroutine
// per worker reads that worker's acks the same way. A single mutex guards the
// dispatcher's state; both kinds of goroutine hold it only around non-blocking
// syscalls. An acceptor that finds no room parks on a sync.Cond without
// accepting, so the burst waits in the kernel's accept queue; acks, a new ready
// worker or a detach wake it.
//
// Every goroutine closes its own *os.File when it leaves; others only set a read
// deadline to wake it (os.File.Close waits for a running RawConn callback, which
// may itself be waiting for the mutex).

// handoff is a connection prefork holds: given to a worker under seq and not yet
// acked (inflight), or waiting for a worker (pending, seq unused).
type handoff struct {
	seq   uint32
	index uint32 // listener index
	fd    int    // prefork's copy of the connection
}

// rrSender sends one connection to a worker: the SPEC §4 message on the handoff
// socket, or a Node cluster newconn. Errors are raw; EAGAIN means "full for now".
type rrSender interface {
	sendConn(seq, index uint32, conn int) error
}

// handoffSender is the SPEC §4 codec on prefork's end of a handoff socket.
type handoffSender int

func (fd handoffSender) sendConn(seq, index uint32, conn int) error {
	return sendConn(int(fd), seq, index, conn)
}

// rrWorker is one worker's handoff channel.
type rrWorker struct {
	id       int // the worker's pid
	send     rrSender
	fd       int      // §4: master end, non-blocking; -1 for a channel read elsewhere
	file     *os.File // §4: fd, read by readLoop; nil for a channel read elsewhere
	rc       syscall.RawConn
	readFn   func(uintptr) bool // d.readAcks bound once to this worker
	ready    bool
	draining bool
	gone     bool // channel closed: detached, broken, closed by the worker, or dispatcher closed
	inflight []handoff
	handed   uint64
	acked    uint64
	buf      []byte   // one ack message
	oob      []byte   // room to notice (and close) a descriptor sent by the worker
	seqs     []uint32 // parsed acks of one message
}

// rrListener is one listener the dispatcher accepts on.
type rrListener struct {
	index    uint32
	file     *os.File // a dup of the supervisor's descriptor, owned by the dispatcher
	rc       syscall.RawConn
	acceptFn func(uintptr) bool // d.acceptSome bound once to this listener
	err      error              // set by acceptFn when accepting must pause or stop
}

// rrWorkerStats is one worker as the dispatcher sees it.
type rrWorkerStats struct {
	id       int    // pid
	handed   uint64 // connections sent to it, requeued ones included
	acked    uint64
	inflight int // sent and not yet acked
	ready    bool
	draining bool
}

// dispatcher hands the connections of prefork's listeners to workers in turn.
type dispatcher struct {
	log       *slog.Logger
	onBroken  func(id int, err error)
	window    int
	listeners []*rrListener
	wg        sync.WaitGroup

	mu      sync.Mutex
	room    *sync.Cond // an acceptor waits here while no connection can be placed
	closed  bool
	workers []*rrWorker // in attach order
	next    int         // round-robin cursor into workers
	seq     uint32
	pending []handoff // connections waiting for a worker, handed out before new accepts
}

// newDispatcher starts accepting on lfds: raw descriptors of TCP or unix stream
// listeners owned by the supervisor. The dispatcher works on duplicates
// (F_DUPFD_CLOEXEC) that it closes itself, but a duplicate shares the open file
// description: the dispatcher sets it non-blocking, which the supervisor's
// descriptor then is too. That is harmless in rr mode, where no worker inherits
// a listener. window is W, the unacked connections a worker may hold (at least
// 1). onBroken is called on a goroutine of its own when a worker's channel is
// closed for a protocol or I/O error; the supervisor should kill that worker.
func newDispatcher(lfds []int, window int, log *slog.Logger, onBroken func(id int, err error)) (*dispatcher, error) {
	if window < 1 {
		return nil, fmt.Errorf("prefork: rr window must be at least 1, not %d", window)
	}
	d := &dispatcher{log: log, onBroken: onBroken, window: window}
	d.room = sync.NewCond(&d.mu)
	fail := func(err error) (*dispatcher, error) {
		for _, l := range d.listeners {
			l.file.Close()
		}
		return nil, err
	}
	for i, lfd := range lfds {
		typ, err := syscall.GetsockoptInt(lfd, syscall.SOL_SOCKET, syscall.SO_TYPE)
		if err != nil {
			return fail(fmt.Errorf("prefork: rr listener %d: %w", i, os.NewSyscallError("getsockopt", err)))
		}
		if typ != syscall.SOCK_STREAM {
			return fail(fmt.Errorf("prefork: rr mode takes stream listeners only (TCP or unix), listener %d is not", i))
		}
		fd, err := dupCloexec(lfd)
		if err != nil {
			return fail(fmt.Errorf("prefork: rr listener %d: %w", i, err))
		}
		if err := syscall.SetNonblock(fd, true); err != nil {
			syscall.Close(fd)
			return fail(fmt.Errorf("prefork: rr listener %d: %w", i, os.NewSyscallError("fcntl", err)))
		}
		l := &rrListener{index: uint32(i), file: os.NewFile(uintptr(fd), fmt.Sprintf("prefork-rr-listener-%d", i))}
		if l.rc, err = l.file.SyscallConn(); err != nil {
			l.file.Close()
			return fail(fmt.Errorf("prefork: rr listener %d: %w", i, err))
		}
		l.acceptFn = func(fd uintptr) bool { return d.acceptSome(l, int(fd)) }
		d.listeners = append(d.listeners, l)
	}
	for _, l := range d.listeners {
		d.wg.Add(1)
		go d.acceptLoop(l)
	}
	return d, nil
}

// attach takes ownership of the master end of a new worker's channel and reads
// its acks from now on. The worker gets no connection before ready.
func (d *dispatcher) attach(id int, fd int) {
	w := &rrWorker{
		id:   id,
		send: handoffSender(fd),
		fd:   fd,
		buf:  make([]byte, 4*d.window),
		oob:  make([]byte, syscall.CmsgSpace(4*4)),
		seqs: make([]uint32, 0, d.window),
	}
	err := syscall.SetNonblock(fd, true)
	if err == nil {
		w.file = os.NewFile(uintptr(fd), fmt.Sprintf("prefork-rr-worker-%d", id))
		w.rc, err = w.file.SyscallConn()
	} else {
		err = os.NewSyscallError("fcntl", err)
		syscall.Close(fd)
	}
	if err != nil {
		if w.file != nil {
			w.file.Close()
		}
		d.log.Error("rr: cannot use the worker's handoff channel", "pid", id, "err", err)
		if d.onBroken != nil {
			go d.onBroken(id, err)
		}
		return
	}
	w.readFn = func(fd uintptr) bool { return d.readAcks(w) }

	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		w.file.Close()
		return
	}
	d.workers = append(d.workers, w)
	d.wg.Add(1)
	go d.readLoop(w)
}

// attachSender adds a worker whose channel is read elsewhere (the Node cluster
// channel): its acks come through acked and refused, its end through shut.
func (d *dispatcher) attachSender(id int, snd rrSender) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.closed {
		d.workers = append(d.workers, &rrWorker{id: id, send: snd, fd: -1})
	}
}

// acked takes a worker's ack of a connection from a channel read elsewhere.
func (d *dispatcher) acked(id int, seq uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	w := d.workerLocked(id)
	if w == nil {
		return nil
	}
	if !d.ackLocked(w, seq) {
		return fmt.Errorf("ack for sequence number %d, which is not in flight", seq)
	}
	d.pumpLocked()
	d.room.Broadcast()
	return nil
}

// refused takes back a connection a worker did not take: it goes to another.
func (d *dispatcher) refused(id int, seq uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if w := d.workerLocked(id); w != nil {
		for i, h := range w.inflight {
			if h.seq == seq {
				w.inflight = append(w.inflight[:i], w.inflight[i+1:]...)
				d.pending = append(d.pending, h)
				break
			}
		}
		d.pumpLocked()
		d.room.Broadcast()
	}
}

// shut closes a channel read elsewhere: what the worker did not ack goes to
// another worker.
func (d *dispatcher) shut(id int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if w := d.workerLocked(id); w != nil {
		d.shutLocked(w)
		d.pumpLocked()
		d.room.Broadcast()
	}
}

// ready makes a worker eligible for connections.
func (d *dispatcher) ready(id int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if w := d.workerLocked(id); w != nil && !w.draining {
		w.ready = true
		d.pumpLocked()
		d.room.Broadcast()
	}
}

// drain stops handing connections to a worker that is about to stop. What it
// already holds stays its own until it acks or dies.
func (d *dispatcher) drain(id int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if w := d.workerLocked(id); w != nil {
		w.draining = true
	}
}

// detach forgets a worker whose process is gone: acks it sent before it died
// are read first, so that a connection it took is not served twice; every
// connection it had not acked goes to another worker.
func (d *dispatcher) detach(id int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	w := d.workerLocked(id)
	if w == nil {
		return
	}
	for !w.gone && w.file != nil {
		n, oobn, flags, err := recvNoWait(w.fd, w.buf, w.oob)
		if err == syscall.EAGAIN {
			break
		}
		d.handleAcksLocked(w, n, oobn, flags, err)
	}
	d.shutLocked(w)
	for i, x := range d.workers {
		if x == w {
			d.workers = append(d.workers[:i], d.workers[i+1:]...)
			if d.next > i {
				d.next--
			}
			break
		}
	}
	d.pumpLocked()
	d.room.Broadcast()
}

// close stops accepting, closes every channel and every connection prefork
// still holds, and waits for the dispatcher's goroutines. It is idempotent.
func (d *dispatcher) close() {
	d.mu.Lock()
	if !d.closed {
		d.closed = true
		now := time.Now()
		for _, l := range d.listeners {
			l.file.SetReadDeadline(now)
		}
		for _, w := range d.workers {
			w.gone = true
			if w.file != nil {
				w.file.SetReadDeadline(now)
			}
			for _, h := range w.inflight {
				syscall.Close(h.fd)
			}
			w.inflight = nil
		}
		for _, h := range d.pending {
			syscall.Close(h.fd)
		}
		d.pending = nil
		d.workers = nil
		d.room.Broadcast()
	}
	d.mu.Unlock()
	d.wg.Wait()
}

// stats reports every attached worker.
func (d *dispatcher) stats() []rrWorkerStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := make([]rrWorkerStats, 0, len(d.workers))
	for _, w := range d.workers {
		s = append(s, rrWorkerStats{id: w.id, handed: w.handed, acked: w.acked,
			inflight: len(w.inflight), ready: w.ready, draining: w.draining})
	}
	return s
}

// acceptLoop accepts on one listener until the dispatcher is closed, parking
// (without accepting) while no connection could be placed.
func (d *dispatcher) acceptLoop(l *rrListener) {
	defer d.wg.Done()
	defer l.file.Close()
	for {
		d.mu.Lock()
		for !d.acceptableLocked() && !d.closed {
			d.room.Wait()
		}
		closed := d.closed
		d.mu.Unlock()
		if closed {
			return
		}
		l.err = nil
		err := l.rc.Read(l.acceptFn)
		if err == nil {
			err = l.err
		}
		if err == nil {
			continue // no room: park above
		}
		d.mu.Lock()
		closed = d.closed
		d.mu.Unlock()
		if closed {
			return
		}
		if !acceptTemporary(err) {
			d.log.Error("rr: accepting stopped on a listener", "listener", l.index, "err", err)
			return
		}
		d.log.Warn("rr: accept failed, pausing", "listener", l.index, "err", os.NewSyscallError("accept", err))
		time.Sleep(100 * time.Millisecond)
	}
}

// acceptSome is the poller callback of a listener: it accepts and places
// connections while there is room, and reports false to wait for more.
func (d *dispatcher) acceptSome(l *rrListener, lfd int) bool {
	for {
		d.mu.Lock()
		if !d.acceptableLocked() {
			d.mu.Unlock()
			return true
		}
		fd, err := acceptConn(lfd)
		if err != nil {
			d.mu.Unlock()
			switch err {
			case syscall.EAGAIN:
				return false
			case syscall.ECONNABORTED, syscall.EPROTO, syscall.EPERM:
				continue // that connection is gone; the next one may be fine
			}
			l.err = err
			return true
		}
		if !d.placeLocked(fd, l.index) {
			d.pending = append(d.pending, handoff{index: l.index, fd: fd})
		}
		d.mu.Unlock()
	}
}

// acceptTemporary reports whether accepting may work again later.
func acceptTemporary(err error) bool {
	switch err {
	case syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM:
		return true
	}
	return false
}

// eligible reports whether w may get a connection now.
func (d *dispatcher) eligible(w *rrWorker) bool {
	return w.ready && !w.draining && !w.gone && len(w.inflight) < d.window
}

// placeLocked sends connection fd to the next eligible worker in turn; a worker
// whose queue is full right now is skipped, one whose channel fails is broken.
// It reports false when no worker could take it.
func (d *dispatcher) placeLocked(fd int, index uint32) bool {
	n := len(d.workers)
	for i := 0; i < n; i++ {
		k := (d.next + i) % n
		w := d.workers[k]
		if !d.eligible(w) {
			continue
		}
		err := w.send.sendConn(d.seq, index, fd)
		if err == nil {
			w.inflight = append(w.inflight, handoff{seq: d.seq, index: index, fd: fd})
			w.handed++
			d.seq++
			d.next = (k + 1) % n
			return true
		}
		if !sendWouldBlock(err) {
			d.breakLocked(w, os.NewSyscallError("sendmsg", err))
		}
	}
	return false
}

// pumpLocked hands pending connections out while workers have room, and
// reports whether none is left.
func (d *dispatcher) pumpLocked() bool {
	for len(d.pending) > 0 && !d.closed {
		h := d.pending[0]
		if !d.placeLocked(h.fd, h.index) {
			return false
		}
		d.pending = d.pending[:copy(d.pending, d.pending[1:])]
	}
	return len(d.pending) == 0
}

// acceptableLocked reports whether a newly accepted connection could be placed
// at once: nothing is pending (it gets handed out first) and a worker has room.
func (d *dispatcher) acceptableLocked() bool {
	if d.closed || !d.pumpLocked() {
		return false
	}
	for _, w := range d.workers {
		if d.eligible(w) {
			return true
		}
	}
	return false
}

// workerLocked finds an attached worker by pid.
func (d *dispatcher) workerLocked(id int) *rrWorker {
	for _, w := range d.workers {
		if w.id == id {
			return w
		}
	}
	return nil
}
