//go:build linux || darwin

// This file holds what the dispatcher does with a connection a worker
// refused (a Node worker's accepted: false: its server is closed, or at
// maxConnections): it goes to another worker at once, not back to the one
// that refused it until that one accepts another; offered again after that,
// it waits a little longer each time (a backoff), so that workers that all
// refuse cost no spin; and once it has waited RefusedWait since its first
// refusal it is closed, and the log says so. It also holds the removal of a
// listener whose servers are all gone.
package rr

import (
	"syscall"
	"time"
)

// RefusedWait is how long a refused connection may wait for a worker that
// accepts it, from its first refusal, before prefork closes it.
const RefusedWait = 10 * time.Second

// The backoff: the second offer after a refusal waits retryMin, each later
// one twice as long as the one before, up to retryMax.
const (
	retryMin = 10 * time.Millisecond
	retryMax = time.Second
)

// refused is a connection's history of refusals.
type refused struct {
	refusals     int
	by           *worker // the worker that refused it last
	byAcked      uint64  // that worker's acked count then
	firstRefused int64   // its first refusal, Unix nanoseconds
	notBefore    int64   // it is not offered again before this, Unix nanoseconds
}

// refuse takes back a connection a worker did not take: it goes to another
// worker, later to any after a backoff, or is closed once it has waited
// RefusedWait.
func (d *Dispatcher) refuse(w *worker, seq uint32) {
	for i, h := range w.inflight {
		if h.seq != seq {
			continue
		}
		w.inflight = append(w.inflight[:i], w.inflight[i+1:]...)
		now := time.Now().UnixNano()
		if h.refusals == 0 {
			h.firstRefused = now
		}
		h.refusals++
		h.by, h.byAcked = w, w.acked
		if waited := time.Duration(now - h.firstRefused); waited >= RefusedWait {
			d.sys.CloseConn(h.fd)
			d.log.Warn("rr: no worker accepted a connection; closing it", "listener", h.index,
				"refusals", h.refusals, "waited", waited.Round(time.Millisecond), "limit", RefusedWait)
			return
		}
		if h.refusals > 1 {
			h.notBefore = now + int64(min(retryMin<<min(h.refusals-2, 16), retryMax))
		}
		d.pending = append(d.pending, h)
		return
	}
}

// avoiding is the worker a connection should not go to now: the one that
// refused it, while that one has not accepted another since.
func (d *Dispatcher) avoiding(h *handoff) *worker {
	if h.by == nil || h.by.acked > h.byAcked {
		return nil
	}
	return h.by
}

// retryTimeout is the poller timeout in milliseconds until the first pending
// connection in a backoff may be offered again; -1 when none waits so.
func (d *Dispatcher) retryTimeout() int {
	var next int64
	for _, h := range d.pending {
		if h.notBefore > 0 && (next == 0 || h.notBefore < next) {
			next = h.notBefore
		}
	}
	if next == 0 {
		return -1
	}
	return int(ms(next - time.Now().UnixNano()))
}

// sooner is the sooner of two poller timeouts in milliseconds (-1: none).
func sooner(a, b int) int {
	if a < 0 || b >= 0 && b < a {
		return b
	}
	return a
}

// removeListener stops accepting on listener index for good and closes what
// is pending from it. Its entry stays, so that indices keep their meaning.
func (d *Dispatcher) removeListener(index uint32) {
	if int(index) >= len(d.listeners) {
		return
	}
	l := d.listeners[index]
	if l.fd >= 0 {
		if !l.dead {
			d.poll.del(l.fd)
		}
		syscall.Close(l.fd)
		l.fd = -1
	}
	l.dead, l.armed = true, false
	kept := d.pending[:0]
	for _, h := range d.pending {
		if h.index == index {
			d.sys.CloseConn(h.fd)
		} else {
			kept = append(kept, h)
		}
	}
	d.pending = kept
}
