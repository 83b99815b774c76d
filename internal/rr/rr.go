//go:build linux || darwin

// Package rr is prefork's rr dispatcher (--mode rr): it accepts on prefork's
// listeners and hands each connection to a ready worker over the worker's
// channel, keeping its own copy until the worker acks it (the README's "rr
// handoff protocol"). Which worker gets a connection is a Balancer's choice.
//
// One owner. One goroutine, locked to its thread, owns the dispatcher's
// state: workers, listeners, pending connections, counters and the poller.
// It waits in a blocking epoll_wait (kqueue on macOS) on a poller of its own
// that holds every listener, every worker's channel and a wake pipe; when it
// wakes it takes the messages queued for it, reads the acks that came in, then
// accepts (raw accept until EAGAIN or no room) and sends each connection to
// the worker the Balancer picks, all in that one wake-up: no Go poller, no
// goroutine or channel per connection, no wake-up of the supervisor.
//
// Everybody else reaches that state only through the Dispatcher's methods, and
// each of them is a message on the dispatcher's queue: the supervisor's
// (Attach, Ready, Drain, Detach, Shut, AddListener, Close), the Node channel's
// readers' (Ack, Kick) and the snapshots (Stats, Totals, Waiting), which wait
// for the loop's reply. A message is a value (queuing it allocates nothing)
// and wakes the loop once per batch: the first message after the loop last
// looked writes the wake pipe, the others find it awake. Nothing is locked.
//
// While no connection could be placed the listeners are switched off in the
// poller, so a burst waits in the kernel's accept queue; whatever makes room
// switches them back on.
package rr

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prefork/prefork/internal/rrwire"
)

// Sender sends one connection to a worker: the handoff message on its socket,
// or a Node cluster newconn. Errors are raw; EAGAIN means "full for now".
type Sender interface {
	SendConn(seq, index uint32, conn int) error
}

// ListenerFilter is a Sender whose worker serves only some listeners (a Node
// worker gets connections only for servers it has listen()ed on).
type ListenerFilter interface {
	CanTake(index uint32) bool
}

// Sys is the platform's descriptor handling the dispatcher uses, given by
// the caller (prefork's fdpass_*.go): accept one connection from a
// non-blocking listener, close-on-exec and blocking (Accept) or non-blocking
// (AcceptNonblock), with raw syscall.Errno errors, EAGAIN included; close
// prefork's copy of a connection without blocking; duplicate a descriptor
// close-on-exec.
type Sys struct {
	Accept, AcceptNonblock func(lfd int) (int, error)
	CloseConn              func(fd int)
	Dup                    func(fd int) (int, error)
}

// Config is what a dispatcher is made with.
type Config struct {
	Window int          // connections a worker may hold unacked, at least 1
	Log    *slog.Logger //
	Sys    Sys
	// OnBroken is called on a goroutine of its own when a worker's channel is
	// closed for a protocol or I/O error; the supervisor should kill that worker.
	OnBroken func(id int, err error)
	// Balancer picks the worker for each connection; nil is Least.
	Balancer Balancer
	// Wait is how long a connection a Keyed balancer holds back may wait for
	// its worker (0: 60 s).
	Wait time.Duration
}

// WorkerStats is one worker as the dispatcher sees it.
type WorkerStats struct {
	ID       int    // pid
	Slot     int    // SetSlot's, -1 if not told
	Handed   uint64 // connections sent to it, requeued ones included
	Acked    uint64
	Inflight int // sent and not yet acked
	Ready    bool
	Draining bool
}

// Totals counts the dispatcher's connections over its whole life.
type Totals struct {
	Handed        uint64 // sent to a worker, requeued ones again
	Acked         uint64 // taken by a worker
	Redistributed uint64 // unacked when their worker went, requeued
	Pending       int    // waiting for a worker now
}

// handoff is a connection prefork holds: given to a worker under seq and not yet
// acked (inflight), or waiting for a worker (pending, seq unused).
type handoff struct {
	seq   uint32
	index uint32 // listener index
	fd    int    // prefork's copy of the connection
	key   uint32 // a Keyed balancer's key, if keyed
	keyed bool
	since int64 // unix nanoseconds when it started waiting (pending), 0 if not yet
}

// worker is one worker's channel.
type worker struct {
	id       int // the worker's pid
	slot     int // its slot (SetSlot), -1 if not told
	send     Sender
	filter   ListenerFilter // send, when it serves only some listeners
	fd       int            // handoff socket: in the poller, non-blocking; -1 for a channel read elsewhere
	ready    bool
	draining bool
	gone     bool // channel closed: detached, broken, closed by the worker, or dispatcher closed
	tried    uint64
	inflight []handoff
	handed   uint64
	acked    uint64
	acks     *rrwire.Batch // ack messages read in one call
	seqs     []uint32      // parsed acks of one message
}

// listener is one listener the dispatcher accepts on.
type listener struct {
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

// Dispatcher hands the connections of prefork's listeners to workers.
type Dispatcher struct {
	log      *slog.Logger
	onBroken func(id int, err error)
	window   int
	sys      Sys

	q         chan msg      // the queue: every call from outside the loop
	woken     atomic.Bool   // a message is queued and the wake pipe written since the loop last looked
	done      chan struct{} // closed when the loop has returned
	finished  chan struct{} // closed when Close is through: the state is read-only from then on
	closeOnce sync.Once

	// Owned by the loop (by Close once the loop has returned).
	poll      *poller
	listeners []*listener
	workers   []*worker // in attach order
	bal       Balancer
	keyed     Keyed // bal, when it places by key
	wait      int64 // Config.Wait in nanoseconds
	slots     int   // SetSlots
	view      view  // what bal sees of workers, for one connection at a time
	stamp     uint64
	paused    bool // accepting pauses after a temporary error (EMFILE…)
	resume    int64
	closed    bool
	seq       uint32
	pending   []handoff // connections waiting for a worker, handed out before new accepts
	total     Totals
	nonblock  bool // accept connections non-blocking (they go to Node workers)
}

// msg is one call into the loop; reply is set for those that wait.
type msg struct {
	op     op
	id, fd int
	seq    uint32
	ok     bool
	send   Sender
	reply  chan reply
}

type op uint8

const (
	opAttach op = iota
	opAck
	opShut
	opReady
	opDrain
	opDetach
	opKick
	opNonblock
	opSlot
	opSlots
	opAddListener
	opStats
	opTotals
	opWaiting
	opClose
)

type reply struct {
	n      int
	seq    uint32
	err    error
	stats  []WorkerStats
	totals Totals
}

// queueLen bounds the queue; a caller finding it full waits for the loop.
const queueLen = 1024

// New starts accepting on lfds: raw descriptors of TCP or unix stream
// listeners owned by the supervisor. The dispatcher works on duplicates
// (F_DUPFD_CLOEXEC) that it closes itself, but a duplicate shares the open file
// description: the dispatcher sets it non-blocking, which the supervisor's
// descriptor then is too. That is harmless in rr mode, where no worker inherits
// a listener.
func New(lfds []int, c Config) (*Dispatcher, error) {
	if c.Window < 1 {
		return nil, fmt.Errorf("prefork: rr window must be at least 1, not %d", c.Window)
	}
	pl, err := newPoller()
	if err != nil {
		return nil, fmt.Errorf("prefork: rr dispatcher: %w", err)
	}
	d := &Dispatcher{log: c.Log, onBroken: c.OnBroken, window: c.Window, sys: c.Sys, bal: c.Balancer, poll: pl,
		q: make(chan msg, queueLen), done: make(chan struct{}), finished: make(chan struct{})}
	if d.bal == nil {
		d.bal = &Least{}
	}
	d.keyed, _ = d.bal.(Keyed)
	d.wait = int64(c.Wait)
	if d.wait <= 0 {
		d.wait = int64(60 * time.Second)
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.view.d = d
	for i, lfd := range lfds {
		l, err := d.newListener(uint32(i), lfd)
		if err != nil {
			for _, l := range d.listeners {
				syscall.Close(l.fd)
			}
			pl.close()
			return nil, err
		}
		d.listeners = append(d.listeners, l)
	}
	go d.run()
	return d, nil
}

// post queues m for the loop and wakes it unless a message queued before
// did; it reports false once the loop has returned.
func (d *Dispatcher) post(m msg) bool {
	select {
	case <-d.done:
		return false
	default:
	}
	select {
	case d.q <- m:
	case <-d.done:
		return false
	}
	if d.woken.CompareAndSwap(false, true) {
		d.poll.wake()
	}
	return true
}

// call posts m and waits for the loop's reply; once the dispatcher is closed
// the reply is read from the state the loop left.
func (d *Dispatcher) call(m msg) reply {
	m.reply = make(chan reply, 1)
	if d.post(m) {
		select {
		case r := <-m.reply:
			return r
		case <-d.finished:
		}
	} else {
		<-d.finished
	}
	return d.answer(m)
}

// Attach takes ownership of the master end of a new worker's handoff socket,
// reads its acks from now on and sends it connections through s. fd < 0 is a
// channel read elsewhere (the Node cluster channel): its acks come through
// Ack, its end through Shut. The worker gets no connection before Ready.
func (d *Dispatcher) Attach(id int, s Sender, fd int) {
	if !d.post(msg{op: opAttach, id: id, fd: fd, send: s}) && fd >= 0 {
		syscall.Close(fd)
	}
}

// Ack takes a worker's answer to a connection from a channel read
// elsewhere: accepted (prefork's copy is closed), or refused (it goes to
// another worker).
func (d *Dispatcher) Ack(id int, seq uint32, accepted bool) {
	d.post(msg{op: opAck, id: id, seq: seq, ok: accepted})
}

// Shut closes a channel read elsewhere: what the worker did not ack goes to
// another worker.
func (d *Dispatcher) Shut(id int) { d.post(msg{op: opShut, id: id}) }

// Ready makes a worker eligible for connections.
func (d *Dispatcher) Ready(id int) { d.post(msg{op: opReady, id: id}) }

// Drain stops handing connections to a worker that is about to stop. What it
// already holds stays its own until it acks or dies.
func (d *Dispatcher) Drain(id int) { d.post(msg{op: opDrain, id: id}) }

// Detach forgets a worker whose process is gone: acks it sent before it died
// are read first, so that a connection it took is not served twice; every
// connection it had not acked goes to another worker.
func (d *Dispatcher) Detach(id int) { d.post(msg{op: opDetach, id: id}) }

// SetSlot tells which slot a worker serves, for the Balancer (Source).
func (d *Dispatcher) SetSlot(id, slot int) { d.post(msg{op: opSlot, id: id, fd: slot}) }

// SetSlots tells how many slots there are, for the Balancer (Source).
func (d *Dispatcher) SetSlots(n int) { d.post(msg{op: opSlots, fd: n}) }

// Kick makes the dispatcher look again for workers that can take what it
// holds or could accept (a Node worker now has a server on a listener).
func (d *Dispatcher) Kick() { d.post(msg{op: opKick}) }

// SetNonblockConns makes the connections the dispatcher accepts non-blocking
// from now on, as Node workers need them.
func (d *Dispatcher) SetNonblockConns() { d.post(msg{op: opNonblock}) }

// AddListener accepts on one more listener from now on (a socket bound for a
// Node worker's listen()) and returns its index.
func (d *Dispatcher) AddListener(lfd int) (uint32, error) {
	r := d.call(msg{op: opAddListener, fd: lfd})
	return r.seq, r.err
}

// Stats reports every attached worker.
func (d *Dispatcher) Stats() []WorkerStats { return d.call(msg{op: opStats}).stats }

// Totals reports the counts over the dispatcher's life.
func (d *Dispatcher) Totals() Totals { return d.call(msg{op: opTotals}).totals }

// Waiting returns how many connections prefork holds that no worker has taken
// yet: the pending ones, and those handed to a worker before mark (the
// sequence number the previous call returned) and still not acked. An ack
// means the worker took the connection, so these have waited at least since
// the previous call; what was handed since, and is in transit, is not counted.
// The pool reads it every tick.
func (d *Dispatcher) Waiting(mark uint32) (n int, next uint32) {
	r := d.call(msg{op: opWaiting, seq: mark})
	return r.n, r.seq
}

// Close stops accepting, closes every channel and every connection prefork
// still holds, and waits for the loop. It is idempotent. A call racing Close
// gets the answer of a closed dispatcher.
func (d *Dispatcher) Close() {
	d.closeOnce.Do(func() {
		d.post(msg{op: opClose})
		<-d.done
		// The loop has returned: its state is Close's now. What was queued
		// after the close message is answered as a closed dispatcher would.
		for {
			select {
			case m := <-d.q:
				if m.reply != nil {
					m.reply <- d.answer(m)
				} else if m.op == opAttach && m.fd >= 0 {
					syscall.Close(m.fd)
				}
				continue
			default:
			}
			break
		}
		for _, l := range d.listeners {
			syscall.Close(l.fd)
		}
		d.poll.close()
		close(d.finished)
	})
}

// newListener makes the dispatcher's own non-blocking duplicate of a stream
// listener, in the poller but switched off until arm finds room for it.
func (d *Dispatcher) newListener(i uint32, lfd int) (*listener, error) {
	typ, err := syscall.GetsockoptInt(lfd, syscall.SOL_SOCKET, syscall.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("prefork: rr listener %d: %w", i, os.NewSyscallError("getsockopt", err))
	}
	if typ != syscall.SOCK_STREAM {
		return nil, fmt.Errorf("prefork: rr mode takes stream listeners only (TCP or unix), listener %d is not", i)
	}
	fd, err := d.sys.Dup(lfd)
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
	return &listener{index: i, fd: fd}, nil
}

// handle carries out one message on the loop; it reports true for close.
func (d *Dispatcher) handle(m msg) bool {
	switch m.op {
	case opAttach:
		d.attach(m.id, m.send, m.fd)
	case opAck:
		if w := d.worker(m.id); w != nil {
			if !m.ok {
				d.refused(w, m.seq)
			} else if !d.ack(w, m.seq) {
				d.log.Debug("node: ack from a worker", "pid", m.id,
					"err", fmt.Errorf("ack for sequence number %d, which is not in flight", m.seq))
			}
			d.pump()
		}
	case opShut:
		if w := d.worker(m.id); w != nil {
			d.shut(w)
			d.pump()
		}
	case opReady:
		if w := d.worker(m.id); w != nil && !w.draining {
			w.ready = true
			d.pump()
		}
	case opDrain:
		if w := d.worker(m.id); w != nil {
			w.draining = true
		}
	case opDetach:
		d.detach(m.id)
	case opKick:
		d.pump()
	case opNonblock:
		d.nonblock = true
	case opSlot:
		if w := d.worker(m.id); w != nil {
			w.slot = m.fd
			d.pump()
		}
	case opSlots:
		d.slots = m.fd
		d.pump()
	case opClose:
		d.close()
		return true
	default:
		m.reply <- d.answer(m)
	}
	return false
}

// answer is the reply to a request: on the loop, or on any goroutine once
// the dispatcher is closed (AddListener changes nothing then).
func (d *Dispatcher) answer(m msg) reply {
	switch m.op {
	case opAddListener:
		if d.closed {
			return reply{err: errors.New("prefork: rr dispatcher closed")}
		}
		l, err := d.newListener(uint32(len(d.listeners)), m.fd)
		if err != nil {
			return reply{err: err}
		}
		d.listeners = append(d.listeners, l)
		return reply{seq: l.index}
	case opStats:
		s := make([]WorkerStats, 0, len(d.workers))
		for _, w := range d.workers {
			s = append(s, WorkerStats{ID: w.id, Slot: w.slot, Handed: w.handed, Acked: w.acked,
				Inflight: len(w.inflight), Ready: w.ready, Draining: w.draining})
		}
		return reply{stats: s}
	case opTotals:
		t := d.total
		t.Pending = len(d.pending)
		return reply{totals: t}
	case opWaiting:
		n := len(d.pending)
		for _, w := range d.workers {
			for _, h := range w.inflight {
				if int32(m.seq-h.seq) > 0 {
					n++
				}
			}
		}
		return reply{n: n, seq: d.seq}
	}
	return reply{}
}

func (d *Dispatcher) attach(id int, s Sender, fd int) {
	w := &worker{id: id, slot: -1, send: s, fd: fd}
	w.filter, _ = s.(ListenerFilter)
	if fd < 0 {
		d.workers = append(d.workers, w)
		return
	}
	w.acks = rrwire.NewBatch(min(d.window, 64), rrwire.AckLen*d.window)
	w.seqs = make([]uint32, 0, d.window)
	err := syscall.SetNonblock(fd, true)
	if err != nil {
		err = os.NewSyscallError("fcntl", err)
	} else {
		err = d.poll.add(fd, true)
	}
	if err != nil {
		syscall.Close(fd)
		d.log.Error("rr: cannot use the worker's handoff channel", "pid", id, "err", err)
		if d.onBroken != nil {
			go d.onBroken(id, err)
		}
		return
	}
	d.workers = append(d.workers, w)
}

// refused takes back a connection a worker did not take: it goes to another.
func (d *Dispatcher) refused(w *worker, seq uint32) {
	for i, h := range w.inflight {
		if h.seq == seq {
			w.inflight = append(w.inflight[:i], w.inflight[i+1:]...)
			d.pending = append(d.pending, h)
			break
		}
	}
}

func (d *Dispatcher) detach(id int) {
	w := d.worker(id)
	if w == nil {
		return
	}
	d.readAcks(w)
	d.shut(w)
	for i, x := range d.workers {
		if x == w {
			d.workers = append(d.workers[:i], d.workers[i+1:]...)
			d.bal.Removed(i)
			break
		}
	}
	d.pump()
}

// close closes every channel and every connection prefork still holds.
func (d *Dispatcher) close() {
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
}

// workerByFd finds an attached worker by its channel's descriptor.
func (d *Dispatcher) workerByFd(fd int) *worker {
	for _, w := range d.workers {
		if w.fd == fd && !w.gone {
			return w
		}
	}
	return nil
}

// worker finds an attached worker by pid.
func (d *Dispatcher) worker(id int) *worker {
	for _, w := range d.workers {
		if w.id == id {
			return w
		}
	}
	return nil
}
