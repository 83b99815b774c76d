//go:build linux || darwin

// This file holds the life of the sockets bound on a worker's request: what
// one worker, and all of them, may make prefork open (so that a worker that
// calls listen() without end costs prefork none of the descriptors it needs
// for workers, accepts and the control socket), and their end: a socket
// bound on request is closed once no worker serves on it, except that a
// slot whose worker left (stopped or died) before another of the slot
// listened keeps its sockets until the slot's next worker has said
// listening (it asks for the same again).
package nodecluster

import (
	"syscall"

	"github.com/prefork/prefork/internal/procstat"
	"github.com/prefork/prefork/internal/sock"
)

// Defaults of Config's limits.
const (
	// PerWorker is how many sockets one worker's requests may keep bound.
	PerWorker = 64
	// MaxSockets is how many descriptors the sockets bound on request may hold
	// in all (each socket, rr's copy of it, reuseport's per-slot sockets).
	MaxSockets = 1024
)

// canBind reports whether w may make prefork bind one more socket that takes
// cost descriptors, or the errno its listen() fails with: EMFILE, whether the
// worker is over its own limit, all of them are over theirs, or prefork's
// descriptor table would keep less than Reserve free.
func (nc *Cluster) canBind(w *Worker, cost int) syscall.Errno {
	why := ""
	switch {
	case w != nil && w.bound >= nc.perWorker:
		why = "the worker has as many sockets bound for it as one worker may"
	case nc.held+cost > nc.maxSockets:
		why = "the sockets bound for node workers hold as many descriptors as they may"
	case !nc.headroom(cost):
		why = "prefork keeps its remaining descriptors for workers, connections and the control socket"
	default:
		return 0
	}
	if w == nil || !w.toldLimit {
		if w != nil {
			w.toldLimit = true
		}
		nc.log.Warn("node: refusing to bind a socket for a worker (its listen() fails with EMFILE)", "why", why,
			"pid", pidOf(w), "per_worker", nc.perWorker, "held", nc.held, "max", nc.maxSockets)
	}
	return syscall.EMFILE
}

func pidOf(w *Worker) int {
	if w == nil {
		return 0
	}
	return w.pid
}

// headroom reports whether prefork can open cost more descriptors and still
// keep Reserve free under RLIMIT_NOFILE.
func (nc *Cluster) headroom(cost int) bool {
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) != nil || lim.Cur >= 1<<31 {
		return true
	}
	open := procstat.OpenFds()
	return open < 0 || uint64(open+cost+nc.reserve) <= lim.Cur
}

// bindCost is the descriptors a socket bound on request holds at first: the
// socket, and in rr mode the dispatcher's copy.
func (nc *Cluster) bindCost() int {
	if nc.rr != nil {
		return 2
	}
	return 1
}

// Bound lists the sockets bound on request that are open now, by address.
func (nc *Cluster) Bound() []string {
	var out []string
	for _, nl := range nc.ls {
		if nl != nil && !nl.static {
			out = append(out, nl.l.Bound())
		}
	}
	return out
}

// inUse reports whether a worker serves on nl, or a slot whose worker left
// may ask for it again.
func (nc *Cluster) inUse(nl *listener) bool {
	if len(nl.claims) > 0 {
		return true
	}
	for w := range nc.workers {
		if w.stopping {
			continue
		}
		for _, i := range w.servers {
			if i == nl.index {
				return true
			}
		}
	}
	return false
}

// sweep closes every socket bound on request that no worker serves on.
func (nc *Cluster) sweep() {
	for i, nl := range nc.ls {
		if nl == nil || nl.static || nc.inUse(nl) {
			continue
		}
		nc.log.Info("node: closing a socket bound for node workers: no worker serves on it", "addr", nl.l.Bound())
		nc.closeListener(nl)
		nc.ls[i] = nil
	}
}

// closeListener closes a socket bound on request, its per-slot sockets and
// rr's copy, and gives the worker that had it bound its room back.
func (nc *Cluster) closeListener(nl *listener) {
	if nl.rr {
		nc.rr.RemoveListener(nl.index)
		nc.held--
	}
	for slot, fd := range nl.socks {
		if slot != 0 {
			syscall.Close(fd)
			nc.held--
		}
	}
	sock.Close(nl.l)
	nc.held--
	if nl.by != nil {
		nl.by.bound--
	}
}

// claim keeps the sockets a worker served on for its slot when it leaves (it
// is stopped, or died) before another worker of its slot listens: that one
// is its replacement, which will ask for them again. After a reload's new
// worker has taken over the slot, nothing is kept: what the old one served on
// and the new one does not closes.
func (nc *Cluster) claim(w *Worker) {
	for o := range nc.workers {
		if o != w && o.slot == w.slot && o.listening && !o.stopping {
			return
		}
	}
	for _, i := range w.servers {
		if int(i) < len(nc.ls) && nc.ls[i] != nil && !nc.ls[i].static {
			if nc.ls[i].claims == nil {
				nc.ls[i].claims = map[int]bool{}
			}
			nc.ls[i].claims[w.slot] = true
		}
	}
}

// unclaim gives up the claims of slot: its worker has asked for all it
// serves on (it said listening).
func (nc *Cluster) unclaim(slot int) {
	for _, nl := range nc.ls {
		if nl != nil && nl.claims[slot] {
			delete(nl.claims, slot)
		}
	}
}
