//go:build linux || darwin

// This file holds the seam for the choice of worker: the Balancer the
// dispatcher asks where each connection goes, and round robin, prefork's
// policy: strict turns among the workers that can take the connection.
package rr

// View is what a Balancer sees of the workers while it picks one for a
// connection. Workers are numbered 0 to Len()-1 in attach order.
type View interface {
	Len() int
	// Eligible reports whether worker i may get this connection now: ready,
	// not draining, room in its window, serving the connection's listener, and
	// not passed over already for this connection (its send said "full").
	Eligible(i int) bool
	// Inflight is the number of connections handed to worker i and not acked.
	Inflight(i int) int
	// Listener is the index of the listener the connection came from.
	Listener() uint32
}

// Balancer chooses the worker for each connection. The dispatcher calls it
// on its own thread only, so it needs no lock, and on every connection, so it
// should not allocate.
type Balancer interface {
	// Pick returns the worker to try for a connection, one that v says is
	// Eligible, or -1 when none is. When the send fails, Pick is asked again
	// for the same connection, that worker no longer eligible.
	Pick(v View) int
	// Handed tells that worker i of n took the connection.
	Handed(i, n int)
	// Removed tells that worker i is gone; the ones after it move down one.
	Removed(i int)
}

// RoundRobin hands connections in strict turns: each goes to the first
// eligible worker after the one that got the previous connection.
type RoundRobin struct{ next int }

func (r *RoundRobin) Pick(v View) int {
	n := v.Len()
	for i := 0; i < n; i++ {
		if k := (r.next + i) % n; v.Eligible(k) {
			return k
		}
	}
	return -1
}

func (r *RoundRobin) Handed(i, n int) { r.next = (i + 1) % n }

func (r *RoundRobin) Removed(i int) {
	if r.next > i {
		r.next--
	}
}

// view is the dispatcher's View for the connection being placed.
type view struct {
	d     *Dispatcher
	index uint32
	avoid *worker // the worker that refused this connection, while it has not accepted another
}

func (v *view) Len() int { return len(v.d.workers) }

func (v *view) Eligible(i int) bool {
	w := v.d.workers[i]
	return w.tried != v.d.stamp && w != v.avoid && v.d.eligibleFor(w, v.index)
}

func (v *view) Inflight(i int) int { return len(v.d.workers[i].inflight) }

func (v *view) Listener() uint32 { return v.index }
