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
// each of them is a message on the dispatcher's queue (queue.go): the supervisor's
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
	Unread   bool // it has held connections for seconds and acked none of them (unread.go)
}

// Totals counts the dispatcher's connections over its whole life, as
// prefork's status and metrics show them.
type Totals struct {
	Handed        uint64 `json:"handed"`        // sent to a worker, requeued ones again
	Acked         uint64 `json:"acked"`         // taken by a worker
	Redistributed uint64 `json:"redistributed"` // unacked when their worker went, requeued
	Pending       int    `json:"pending"`       // waiting for a worker now
}

// handoff is a connection prefork holds: given to a worker under seq and not yet
// acked (inflight), or waiting for a worker (pending, seq unused).
type handoff struct {
	seq     uint32
	index   uint32 // listener index
	fd      int    // prefork's copy of the connection
	key     uint32 // a Keyed balancer's key, if keyed
	keyed   bool
	since   int64 // unix nanoseconds when it started waiting (pending), 0 if not yet
	refused       // its refusals (refuse.go)
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
	unread                 // unread.go
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

	// unread.go: the next scan for workers that do not read their channel
	// (unix nanoseconds), whether one held connections at the last, and the
	// handed count then.
	unreadNext    int64
	unreadHolding bool
	unreadHanded  uint64
}

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
