//go:build linux || darwin

// This file watches for workers that do not read their handoff channel: a
// server started under --mode rr that accepts on a socket of its own
// (gunicorn, most servers) never reads the connections handed to it, and
// every one of them hangs. Such a worker has connections in flight and acks
// none of them; after unreadAfter the dispatcher says so, once per worker,
// naming the protocol, and Stats reports it as Unread.
package rr

import "time"

const (
	// unreadAfter is how long a worker may hold connections without acking any.
	unreadAfter = 3 * time.Second
	// unreadScan spaces the scans of the workers: one per wake-up at most this often.
	unreadScan = 500 * time.Millisecond
)

// unread is what the dispatcher's loop keeps per worker for this watch.
type unread struct {
	quietSince int64  // unix nanoseconds: since when it has held connections with no ack; 0 when it holds none
	seenAcked  uint64 // its acked count at the last scan
	stuck      bool   // unreadAfter passed with no ack: warned
}

// watchUnread runs on the loop at every wake-up: it scans the workers at
// most every unreadScan and warns of each worker that has held connections
// unacked for unreadAfter. It returns the poller timeout (milliseconds) that
// brings the next scan while a worker holds connections, or -1.
func (d *Dispatcher) watchUnread() int {
	now := time.Now().UnixNano()
	if now < d.unreadNext {
		if !d.unreadHolding && d.total.Handed == d.unreadHanded {
			return -1 // nothing held at the last scan, nothing handed since
		}
		return int(ms(d.unreadNext - now))
	}
	d.unreadNext, d.unreadHanded = now+int64(unreadScan), d.total.Handed
	holding := false
	for _, w := range d.workers {
		u := &w.unread
		switch {
		case len(w.inflight) == 0 || w.gone:
			u.quietSince, u.stuck = 0, false
		case u.quietSince == 0 || w.acked != u.seenAcked:
			u.quietSince, u.stuck = now, false
		case !u.stuck && now-u.quietSince >= int64(unreadAfter):
			u.stuck = true
			channel := "its handoff channel (fd 3)"
			if w.fd < 0 {
				channel = "its Node cluster channel"
			}
			d.log.Warn("rr: a worker has acknowledged none of the connections handed to it; they wait: "+
				"in --mode rr a worker must read "+channel+" and ack each connection (the rr handoff protocol); "+
				"a server that accepts on inherited sockets (LISTEN_FDS) wants --mode shared or reuseport",
				"pid", w.id, "slot", w.slot, "pending", len(w.inflight), "waited", time.Duration(now-u.quietSince).Round(time.Millisecond))
		}
		u.seenAcked = w.acked
		holding = holding || len(w.inflight) > 0 && !u.stuck
	}
	d.unreadHolding = holding
	if !holding {
		return -1
	}
	return int(ms(int64(unreadScan)))
}
