//go:build linux || darwin

// This file holds the seam for the choice of worker, the Balancer the
// dispatcher asks where each connection goes, and prefork's policies
// (--balance): Least, the default, the eligible worker with the fewest
// connections in flight; RoundRobin, strict turns; Source (source.go), the
// client's address picks the slot.
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
	// Slot is worker i's slot (SetSlot), -1 if it was not told.
	Slot(i int) int
	// Slots is the number of slots (SetSlots), 0 if it was not told.
	Slots() int
	// Key is the connection's key (Keyed), ok false when it has none.
	Key() (key uint32, ok bool)
	// Late reports that the connection waited as long as it may for the
	// worker its key names: it goes to any worker now.
	Late() bool
}

// Balancer chooses the worker for each connection. The dispatcher calls it
// on its own thread only, so it needs no lock, and on every connection, so it
// should not allocate.
type Balancer interface {
	// Pick returns the worker to try for a connection, one that v says is
	// Eligible, or -1 when none is (or, for a Keyed balancer, when the
	// connection should wait for its own worker). When the send fails, Pick is
	// asked again for the same connection, that worker no longer eligible.
	Pick(v View) int
	// Handed tells that worker i of n took the connection.
	Handed(i, n int)
	// Removed tells that worker i is gone; the ones after it move down one.
	Removed(i int)
}

// Keyed is a Balancer that places a connection by a key read from it once,
// when it is accepted (Source: the client's address). A connection its Pick
// leaves waiting does not hold up the ones behind it; it waits at most
// Config.Wait, and at most Config.Window of them wait at once: the oldest
// beyond that, and any that waited too long, are placed with View.Late true.
type Keyed interface {
	Balancer
	Key(conn int) (key uint32, ok bool)
}

// turn is the position of the next turn, kept across removals.
type turn struct{ next int }

func (t *turn) Handed(i, n int) { t.next = (i + 1) % n }

func (t *turn) Removed(i int) {
	if t.next > i {
		t.next--
	}
}

// RoundRobin hands connections in strict turns: each goes to the first
// eligible worker after the one that got the previous connection.
type RoundRobin struct{ turn }

func (r *RoundRobin) Pick(v View) int {
	n := v.Len()
	for i := 0; i < n; i++ {
		if k := (r.next + i) % n; v.Eligible(k) {
			return k
		}
	}
	return -1
}

// Least hands a connection to the eligible worker with the fewest
// connections in flight (handed and not acked), ties in turn: under an even
// load, where every worker acks before the next connection comes, it is
// RoundRobin exactly; a worker whose event loop is busy stops acking and
// gets nothing more while another has fewer.
type Least struct{ turn }

func (l *Least) Pick(v View) int {
	n := v.Len()
	best, low := -1, 0
	for i := 0; i < n; i++ {
		k := (l.next + i) % n
		if !v.Eligible(k) {
			continue
		}
		if f := v.Inflight(k); best < 0 || f < low {
			best, low = k, f
			if f == 0 {
				break
			}
		}
	}
	return best
}

// view is the dispatcher's View for the connection being placed.
type view struct {
	d     *Dispatcher
	index uint32
	key   uint32
	keyed bool
	late  bool
	avoid *worker // the worker that refused this connection, while it has not accepted another
}

func (v *view) Len() int { return len(v.d.workers) }

func (v *view) Eligible(i int) bool {
	w := v.d.workers[i]
	return w.tried != v.d.stamp && w != v.avoid && v.d.eligibleFor(w, v.index)
}

func (v *view) Inflight(i int) int { return len(v.d.workers[i].inflight) }

func (v *view) Listener() uint32 { return v.index }

func (v *view) Slot(i int) int { return v.d.workers[i].slot }

func (v *view) Slots() int { return v.d.slots }

func (v *view) Key() (uint32, bool) { return v.key, v.keyed }

func (v *view) Late() bool { return v.late }
