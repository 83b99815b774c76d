//go:build linux || darwin

// This file implements --mode rr: the dispatcher that accepts on prefork's
// listeners and hands each connection to the next ready worker over its handoff
// channel, keeping its own copy until the worker acks it (README: The rr handoff protocol).
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"

	"github.com/prefork/prefork/internal/rrwire"
)

// rrDefaultWindow is the default W: connections a worker may hold unacked.
const rrDefaultWindow = 32

// Design. One goroutine, locked to its thread, waits in a blocking
// epoll_wait (kqueue on macOS) on a poller of its own that holds every
// listener and every worker's channel; when it wakes it reads the acks that
// came in, then accepts (raw accept4 until EAGAIN or no room) and sends each
// connection to the next worker, all in that one wake-up: no Go poller, no
// goroutine or channel per connection, no wake-up of the supervisor. A mutex
// guards the dispatcher's state, for the supervisor's calls (attach, ready,
// drain, detach, stats) and a channel read elsewhere (acked, refused, shut);
// it is held only around non-blocking syscalls. While no connection could be
// placed the listeners are switched off in the poller, so a burst waits in the
// kernel's accept queue; whoever makes room switches them back on.

// handoff is a connection prefork holds: given to a worker under seq and not yet
// acked (inflight), or waiting for a worker (pending, seq unused).
type handoff struct {
	seq   uint32
	index uint32 // listener index
	fd    int    // prefork's copy of the connection
}

// rrSender sends one connection to a worker: the rr handoff message on the handoff
// socket, or a Node cluster newconn. Errors are raw; EAGAIN means "full for now".
type rrSender interface {
	sendConn(seq, index uint32, conn int) error
}

// handoffSender is the rr handoff codec on prefork's end of a handoff socket.
type handoffSender int

func (fd handoffSender) sendConn(seq, index uint32, conn int) error {
	return rrwire.Send(int(fd), seq, index, conn)
}

// rrWorker is one worker's handoff channel.
type rrWorker struct {
	id       int // the worker's pid
	send     rrSender
	fd       int // master end, non-blocking, in the poller; -1 for a channel read elsewhere
	ready    bool
	draining bool
	gone     bool // channel closed: detached, broken, closed by the worker, or dispatcher closed
	inflight []handoff
	handed   uint64
	acked    uint64
	acks     *rrwire.Batch // ack messages read in one call
	seqs     []uint32      // parsed acks of one message
}

// rrListener is one listener the dispatcher accepts on.
type rrListener struct {
	index uint32
	fd    int  // a dup of the supervisor's descriptor, owned by the dispatcher
	armed bool // on in the poller
	dead  bool // accepting failed for good on it
	// shallow: the queue held one connection at a time lately, so a wake-up
	// accepts one and leaves the poller (level-triggered) to report more,
	// rather than paying an accept4 that says EAGAIN every time; probe counts
	// the shallow wake-ups until the next full drain checks that again.
	shallow bool
	probe   int
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
	poll      *poller
	wg        sync.WaitGroup

	mu      sync.Mutex
	paused  bool // accepting pauses after a temporary error (EMFILE…)
	closed  bool
	workers []*rrWorker // in attach order
	next    int         // round-robin cursor into workers
	seq     uint32
	pending []handoff // connections waiting for a worker, handed out before new accepts
	total   rrTotals  // counted over the dispatcher's life, for the metrics

	nonblockConns bool // accept connections non-blocking (they go to Node workers)
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
	pl, err := newPoller()
	if err != nil {
		return nil, fmt.Errorf("prefork: rr dispatcher: %w", err)
	}
	d := &dispatcher{log: log, onBroken: onBroken, window: window, poll: pl}
	fail := func(err error) (*dispatcher, error) {
		for _, l := range d.listeners {
			syscall.Close(l.fd)
		}
		pl.close()
		return nil, err
	}
	for i, lfd := range lfds {
		l, err := d.newListener(uint32(i), lfd)
		if err != nil {
			return fail(err)
		}
		d.listeners = append(d.listeners, l)
	}
	d.wg.Add(1)
	go d.run()
	return d, nil
}

// newListener makes the dispatcher's own non-blocking duplicate of a stream
// listener, in the poller but switched off until armLocked finds room for it.
func (d *dispatcher) newListener(i uint32, lfd int) (*rrListener, error) {
	typ, err := syscall.GetsockoptInt(lfd, syscall.SOL_SOCKET, syscall.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("prefork: rr listener %d: %w", i, os.NewSyscallError("getsockopt", err))
	}
	if typ != syscall.SOCK_STREAM {
		return nil, fmt.Errorf("prefork: rr mode takes stream listeners only (TCP or unix), listener %d is not", i)
	}
	fd, err := dupCloexec(lfd)
	if err != nil {
		return nil, fmt.Errorf("prefork: rr listener %d: %w", i, err)
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("prefork: rr listener %d: %w", i, os.NewSyscallError("fcntl", err))
	}
	if err := d.poll.add(fd, false); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("prefork: rr listener %d: %w", i, err)
	}
	l := &rrListener{index: i, fd: fd}
	return l, nil
}

// addListener accepts on one more listener from now on (a socket bound for a
// Node worker's listen()) and returns its index.
func (d *dispatcher) addListener(lfd int) (uint32, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, errors.New("prefork: rr dispatcher closed")
	}
	l, err := d.newListener(uint32(len(d.listeners)), lfd)
	if err != nil {
		return 0, err
	}
	d.listeners = append(d.listeners, l)
	d.armLocked()
	return l.index, nil
}

// setNonblockConns makes the connections the dispatcher accepts non-blocking
// from now on, as Node workers need them.
func (d *dispatcher) setNonblockConns() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nonblockConns = true
}

// kick makes the dispatcher look again for workers that can take what it
// holds or could accept (a Node worker now has a server on a listener).
func (d *dispatcher) kick() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pumpLocked()
	d.armLocked()
}

// attach takes ownership of the master end of a new worker's channel and reads
// its acks from now on. The worker gets no connection before ready.
func (d *dispatcher) attach(id int, fd int) {
	w := &rrWorker{
		id:   id,
		send: handoffSender(fd),
		fd:   fd,
		acks: rrwire.NewBatch(min(d.window, 64), rrwire.AckLen*d.window),
		seqs: make([]uint32, 0, d.window),
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	err := syscall.SetNonblock(fd, true)
	if err != nil {
		err = os.NewSyscallError("fcntl", err)
	} else if !d.closed {
		err = d.poll.add(fd, true)
	}
	if err != nil || d.closed {
		syscall.Close(fd)
		if err != nil {
			d.log.Error("rr: cannot use the worker's handoff channel", "pid", id, "err", err)
			if d.onBroken != nil {
				go d.onBroken(id, err)
			}
		}
		return
	}
	d.workers = append(d.workers, w)
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
	d.armLocked()
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
		d.armLocked()
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
		d.armLocked()
	}
}

// ready makes a worker eligible for connections.
func (d *dispatcher) ready(id int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if w := d.workerLocked(id); w != nil && !w.draining {
		w.ready = true
		d.pumpLocked()
		d.armLocked()
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
	d.readAcksLocked(w)
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
	d.armLocked()
}

// close stops accepting, closes every channel and every connection prefork
// still holds, and waits for the dispatcher's goroutine. It is idempotent.
func (d *dispatcher) close() {
	d.mu.Lock()
	if !d.closed {
		d.closed = true
		for _, w := range d.workers {
			if !w.gone && w.fd >= 0 {
				syscall.Close(w.fd)
			}
			w.gone = true
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
		d.poll.wake()
	}
	d.mu.Unlock()
	d.wg.Wait()
	d.mu.Lock()
	if d.poll != nil {
		for _, l := range d.listeners {
			syscall.Close(l.fd)
		}
		d.poll.close()
		d.poll = nil
	}
	d.mu.Unlock()
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

// waiting returns how many connections prefork holds that no worker has taken
// yet: the pending ones, and those handed to a worker before mark (the
// sequence number the previous call returned) and still not acked. An ack
// means the worker took the connection, so these have waited at least since
// the previous call; what was handed since, and is in transit, is not counted.
// The pool reads it every tick (pool.go).
func (d *dispatcher) waiting(mark uint32) (n int, next uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n = len(d.pending)
	for _, w := range d.workers {
		for _, h := range w.inflight {
			if int32(mark-h.seq) > 0 {
				n++
			}
		}
	}
	return n, d.seq
}

// workerByFdLocked finds an attached worker by its channel's descriptor.
func (d *dispatcher) workerByFdLocked(fd int) *rrWorker {
	for _, w := range d.workers {
		if w.fd == fd && !w.gone {
			return w
		}
	}
	return nil
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
