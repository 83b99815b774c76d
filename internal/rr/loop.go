//go:build linux || darwin

// This file holds the dispatcher's thread: the loop that waits on the
// poller, takes the queued messages, reads acks, accepts while a worker has
// room, and places each connection with the worker the Balancer picks
// (window, pending first).
package rr

import (
	"os"
	"runtime"
	"syscall"
	"time"

	"github.com/prefork/prefork/internal/rrwire"
)

// pauseFor is how long accepting pauses after a temporary error (EMFILE…).
const pauseFor = 100 * time.Millisecond

// run is the dispatcher's loop, on a thread of its own: wait, take messages,
// read acks, accept and hand out, until the dispatcher is closed.
func (d *Dispatcher) run() {
	defer close(d.done)
	// A blocking wait in the kernel rather than the runtime's poller: waking
	// this thread is one system call, not a goroutine switch through the
	// scheduler's spinning threads.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ready := make([]int, 64)
	for {
		// Milliseconds; -1 for none. A refused connection may wait for its
		// backoff to end.
		timeout := sooner(sooner(d.waitTimeout(), d.retryTimeout()), d.watchUnread())
		if d.paused {
			if left := d.resume - time.Now().UnixNano(); left > 0 {
				timeout = sooner(timeout, int(ms(left)))
			} else {
				d.paused = false
				d.arm()
			}
		}
		n, err := d.poll.wait(ready, timeout)
		if d.woken.Swap(false) && d.drainQueue() {
			return
		}
		if err != nil && err != syscall.EINTR {
			d.log.Error("rr: the dispatcher's poller failed", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		// Acks first: they make room for what is accepted next.
		for _, fd := range ready[:n] {
			if w := d.workerByFd(fd); w != nil {
				d.readAcks(w)
			}
		}
		d.pump()
		for _, fd := range ready[:n] {
			for _, l := range d.listeners {
				if l.fd == fd && !l.dead {
					d.accept(l)
				}
			}
		}
		d.arm()
	}
}

// drainQueue handles every queued message; it reports true on close.
func (d *Dispatcher) drainQueue() bool {
	for {
		select {
		case m := <-d.q:
			if d.handle(m) {
				return true
			}
		default:
			return false
		}
	}
}

// shallowProbe is how many wake-ups accept one connection each, while the
// queue looks shallow, before one drains it again to see.
const shallowProbe = 4

// accept accepts and places connections from one listener while there is
// room, until its queue is empty, or just one while it has been shallow.
func (d *Dispatcher) accept(l *listener) {
	accept := d.sys.Accept
	if d.nonblock {
		accept = d.sys.AcceptNonblock
	}
	once := l.shallow && l.probe < shallowProbe
	if once {
		l.probe++
	} else {
		l.probe = 0
	}
	got := 0
	for (!once || got == 0) && !d.paused && d.acceptable(l.index) {
		fd, err := accept(l.fd)
		switch err {
		case nil:
			got++
		case syscall.EAGAIN:
			l.shallow = got <= 1
			return
		case syscall.ECONNABORTED, syscall.EPROTO, syscall.EPERM:
			continue // that connection is gone; the next one may be fine
		default:
			if !acceptTemporary(err) {
				d.log.Error("rr: accepting stopped on a listener", "listener", l.index, "err", os.NewSyscallError("accept", err))
				l.dead = true
				d.poll.del(l.fd)
				return
			}
			d.log.Warn("rr: accept failed, pausing", "listener", l.index, "err", os.NewSyscallError("accept", err))
			d.paused = true
			d.resume = time.Now().Add(pauseFor).UnixNano()
			return
		}
		h := handoff{index: l.index, fd: fd}
		if d.keyed != nil {
			h.key, h.keyed = d.keyed.Key(fd)
		}
		if !d.place(h) {
			if h.keyed {
				h.since = time.Now().UnixNano()
			}
			d.pending = append(d.pending, h)
		}
	}
}

// arm switches the listeners on in the poller while a connection could be
// placed, and off otherwise.
func (d *Dispatcher) arm() {
	for _, l := range d.listeners {
		want := !d.closed && !d.paused && !l.dead && d.acceptable(l.index)
		if want != l.armed {
			l.armed = want
			d.poll.set(l.fd, want)
		}
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
func (d *Dispatcher) eligible(w *worker) bool {
	return w.ready && !w.draining && !w.gone && len(w.inflight) < d.window
}

// eligibleFor reports whether w may get a connection from listener index now.
func (d *Dispatcher) eligibleFor(w *worker, index uint32) bool {
	return d.eligible(w) && (w.filter == nil || w.filter.CanTake(index))
}

// place sends connection h to the worker the Balancer picks; a worker whose
// queue is full right now is passed over for this connection, one whose
// channel fails is broken. It reports false when no worker could take it (or
// a Keyed balancer holds it back for its own worker).
func (d *Dispatcher) place(h handoff) bool {
	return d.placeLate(h, false)
}

// placeLate is place, telling the Balancer whether the connection waited too long.
func (d *Dispatcher) placeLate(h handoff, late bool) bool {
	fd, index := h.fd, h.index
	d.stamp++
	d.view.index, d.view.key, d.view.keyed, d.view.late = index, h.key, h.keyed, late
	d.view.avoid = d.avoiding(&h)
	for {
		k := d.bal.Pick(&d.view)
		if k < 0 && d.view.avoid != nil {
			d.view.avoid = nil // the worker that refused it is the only one that may take it now
			k = d.bal.Pick(&d.view)
		}
		if k < 0 {
			return false
		}
		w := d.workers[k]
		w.tried = d.stamp
		err := w.send.SendConn(d.seq, index, fd)
		if err == nil {
			w.inflight = append(w.inflight, handoff{seq: d.seq, index: index, fd: fd, key: h.key, keyed: h.keyed, refused: h.refused})
			w.handed++
			d.total.Handed++
			d.seq++
			d.bal.Handed(k, len(d.workers))
			return true
		}
		if !rrwire.WouldBlock(err) {
			d.breakChannel(w, os.NewSyscallError("sendmsg", err))
		}
	}
}

// pump hands pending connections out, in order, while workers have room for
// them (one no worker can take now does not hold up the others).
func (d *Dispatcher) pump() {
	if d.closed || len(d.pending) == 0 {
		return
	}
	// A worker that breaks while placing queues its connections on d.pending:
	// they go after what was pending before. What stays is kept in todo's own
	// array (kept never runs ahead of i), so a pump allocates nothing: it runs
	// on every accept and arm while connections are pending.
	todo := d.pending
	d.pending = nil
	kept := todo[:0]
	// A Keyed balancer's connections wait for their own worker, Config.Wait at
	// most and Window of them at most: the oldest beyond that go anywhere.
	var now int64
	over := 0
	if d.keyed != nil {
		now = time.Now().UnixNano()
		over = len(todo) - d.window
	}
	clock := time.Now().UnixNano()
	for i, h := range todo {
		late := i < over || h.since != 0 && now-h.since >= d.wait
		if h.notBefore > clock || !d.placeLate(h, late) {
			if h.keyed && h.since == 0 {
				h.since = now
			}
			kept = append(kept, h)
			if d.full() {
				kept = append(kept, todo[i+1:]...)
				break
			}
		}
	}
	d.pending = append(kept, d.pending...)
}

// full reports whether no worker could take any connection now.
func (d *Dispatcher) full() bool {
	for _, w := range d.workers {
		if d.eligible(w) {
			return false
		}
	}
	return true
}

// acceptable reports whether a connection newly accepted on listener index
// could be placed at once: none from it is pending (those go first) and a
// worker has room for it.
func (d *Dispatcher) acceptable(index uint32) bool {
	if d.closed {
		return false
	}
	d.pump()
	now := time.Now().UnixNano()
	for _, h := range d.pending {
		// A keyed one waits for its own worker only; a refused one in its
		// backoff holds up no other.
		if h.index == index && d.keyed == nil && h.notBefore <= now {
			return false
		}
	}
	for _, w := range d.workers {
		if d.eligibleFor(w, index) {
			return true
		}
	}
	return false
}

// waitTimeout is how long the loop may sleep before a connection a Keyed
// balancer holds back has waited its time: milliseconds, -1 for no limit.
func (d *Dispatcher) waitTimeout() int {
	if d.keyed == nil || len(d.pending) == 0 {
		return -1
	}
	first := int64(0)
	for _, h := range d.pending {
		if h.since != 0 && (first == 0 || h.since < first) {
			first = h.since
		}
	}
	if first == 0 {
		return -1
	}
	return int(ms(first + d.wait - time.Now().UnixNano()))
}

// ms is nanoseconds as whole milliseconds, rounded up, 0 for the past.
func ms(ns int64) uint {
	if ns <= 0 {
		return 0
	}
	return uint((ns + int64(time.Millisecond) - 1) / int64(time.Millisecond))
}
