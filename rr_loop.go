//go:build linux || darwin

// This file holds the rr dispatcher's thread: the loop that waits on the
// poller, reads acks, accepts while a worker has room, and places each
// connection with the next eligible worker in turn (window, pending first).
package main

import (
	"os"
	"runtime"
	"syscall"
	"time"

	"github.com/prefork/prefork/internal/rrwire"
)

// run is the dispatcher's loop, on a thread of its own: wait, read acks,
// accept and hand out, until the dispatcher is closed.
func (d *dispatcher) run() {
	defer d.wg.Done()
	// A blocking wait in the kernel rather than the runtime's poller: waking
	// this thread is one system call, not a goroutine switch through the
	// scheduler's spinning threads.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ready := make([]int, 64)
	for {
		n, err := d.poll.wait(ready)
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			return
		}
		if err != nil && err != syscall.EINTR {
			d.mu.Unlock()
			d.log.Error("rr: the dispatcher's poller failed", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		// Acks first: they make room for what is accepted next.
		for _, fd := range ready[:n] {
			if w := d.workerByFdLocked(fd); w != nil {
				d.readAcksLocked(w)
			}
		}
		d.pumpLocked()
		for _, fd := range ready[:n] {
			for _, l := range d.listeners {
				if l.fd == fd && !l.dead {
					d.acceptLocked(l)
				}
			}
		}
		d.armLocked()
		d.mu.Unlock()
	}
}

// shallowProbe is how many wake-ups accept one connection each, while the
// queue looks shallow, before one drains it again to see.
const shallowProbe = 4

// acceptLocked accepts and places connections from one listener while there
// is room, until its queue is empty, or just one while it has been shallow.
func (d *dispatcher) acceptLocked(l *rrListener) {
	accept := acceptConn
	if d.nonblockConns {
		accept = acceptConnNonblock
	}
	once := l.shallow && l.probe < shallowProbe
	if once {
		l.probe++
	} else {
		l.probe = 0
	}
	got := 0
	for (!once || got == 0) && !d.paused && d.acceptableLocked(l.index) {
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
			time.AfterFunc(100*time.Millisecond, func() {
				d.mu.Lock()
				d.paused = false
				if !d.closed {
					d.armLocked()
				}
				d.mu.Unlock()
			})
			return
		}
		if !d.placeLocked(fd, l.index) {
			d.pending = append(d.pending, handoff{index: l.index, fd: fd})
		}
	}
}

// armLocked switches the listeners on in the poller while a connection could
// be placed, and off otherwise.
func (d *dispatcher) armLocked() {
	if d.poll == nil {
		return
	}
	for _, l := range d.listeners {
		want := !d.closed && !d.paused && !l.dead && d.acceptableLocked(l.index)
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
func (d *dispatcher) eligible(w *rrWorker) bool {
	return w.ready && !w.draining && !w.gone && len(w.inflight) < d.window
}

// rrListenerFilter is a sender whose worker serves only some listeners (a
// Node worker gets connections only for servers it has listen()ed on).
type rrListenerFilter interface {
	canTake(index uint32) bool
}

// eligibleFor reports whether w may get a connection from listener index now.
func (d *dispatcher) eligibleFor(w *rrWorker, index uint32) bool {
	if !d.eligible(w) {
		return false
	}
	f, ok := w.send.(rrListenerFilter)
	return !ok || f.canTake(index)
}

// placeLocked sends connection fd to the next eligible worker in turn; a worker
// whose queue is full right now is skipped, one whose channel fails is broken.
// It reports false when no worker could take it.
func (d *dispatcher) placeLocked(fd int, index uint32) bool {
	n := len(d.workers)
	for i := 0; i < n; i++ {
		k := (d.next + i) % n
		w := d.workers[k]
		if !d.eligibleFor(w, index) {
			continue
		}
		err := w.send.sendConn(d.seq, index, fd)
		if err == nil {
			w.inflight = append(w.inflight, handoff{seq: d.seq, index: index, fd: fd})
			w.handed++
			d.total.Handed++
			d.seq++
			d.next = (k + 1) % n
			return true
		}
		if !rrwire.WouldBlock(err) {
			d.breakLocked(w, os.NewSyscallError("sendmsg", err))
		}
	}
	return false
}

// pumpLocked hands pending connections out, in order, while workers have room
// for them (one no worker can take now does not hold up the others).
func (d *dispatcher) pumpLocked() {
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
	for i, h := range todo {
		if !d.placeLocked(h.fd, h.index) {
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
func (d *dispatcher) full() bool {
	for _, w := range d.workers {
		if d.eligible(w) {
			return false
		}
	}
	return true
}

// acceptableLocked reports whether a connection newly accepted on listener
// index could be placed at once: none from it is pending (those go first) and
// a worker has room for it.
func (d *dispatcher) acceptableLocked(index uint32) bool {
	if d.closed {
		return false
	}
	d.pumpLocked()
	for _, h := range d.pending {
		if h.index == index {
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
