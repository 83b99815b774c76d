//go:build linux || darwin

// This file runs the pool: the pool goroutine samples the accept queues and
// the workers' process groups on a ticker, hands the samples to the policy
// (internal/pool: the elastic worker count of -n MIN:MAX and --idle-timeout,
// the --max-rss and --max-lifetime limits) and sends what it decides to the
// owner loop, which acts through the slot table. The options' checks against
// each other are here too.
package main

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prefork/prefork/internal/pool"
	"github.com/prefork/prefork/internal/procstat"
	"github.com/prefork/prefork/internal/rr"
)

// poolUsageTicks: /proc is read every this many ticks (pool.Tick each: 1 s).
// The man page's "Pool sizing" section describes it; keep the two in step.
const poolUsageTicks = 10

// validatePool checks the pool options against each other and the platform.
func (c *config) validatePool() error {
	switch {
	case c.idleTimeoutSet && c.poolMax == 0:
		return usagef("--idle-timeout applies to an elastic pool: give -n MIN:MAX")
	case c.poolMax > 0 && c.idleTimeout < 100*time.Millisecond:
		return usagef("--idle-timeout %v is too short (at least 100ms)", c.idleTimeout)
	case c.maxRSS > 0 && !procstat.Supported:
		return usagef("--max-rss needs Linux: %v", procstat.ErrUnsupported)
	case c.maxLifetimeSet && c.maxLifetime < time.Second:
		return usagef("--max-lifetime %v is too short (at least 1s)", c.maxLifetime)
	}
	return nil
}

// The pool goroutine. The owner loop publishes a view of its slots after every
// event; the pool goroutine samples on a ticker (the accept queues every
// pool.Tick, /proc every poolUsageTicks ticks), decides, and sends poolEvents
// back; the owner loop validates each against its own state and acts through
// slots.go (scaleTo, replace).

// poolView is what the pool goroutine knows of the supervisor: a copy the owner
// loop publishes, never shared state.
type poolView struct {
	workers   []pool.Worker // every slot's serving worker
	pids      []int         // every worker, serving or not: their process groups are sampled
	slots     int
	starting  int // slots whose serving worker is not up yet
	replacing int // slots bringing up a replacement
	reloading bool
	queues    []poolQueue // the listening sockets whose accept queue can be read
	handled   uint64      // pool events the owner loop had handled when it made this view
}

// poolQueue is one listening socket to read: a listener's, or in reuseport
// mode one slot's socket of it.
type poolQueue struct {
	listener int
	fd       int
}

// poolStats is the latest reading, for the status file and metrics.
type poolStats struct {
	usage  map[int]procstat.Usage // by worker pid; nil where /proc cannot be read
	queues []int                  // accept-queue length by listener; -1 where it cannot be read
}

// poolEvent is what the pool goroutine asks of the owner loop.
type poolEvent struct {
	scale   int            // workers to add (> 0) or stop (< 0)
	waiting int            // connections waiting, for the log line of a scale-up
	replace []pool.Replace // workers to replace, and why
	stats   *poolStats
}

// poolHandle is the owner loop's side of the pool: the published view, the latest
// stats, and how to stop the goroutine.
type poolHandle struct {
	view    atomic.Pointer[poolView]
	stats   poolStats
	handled uint64 // pool events handled
	stop    chan struct{}
	done    chan struct{}
}

// poolWanted reports whether anything needs the pool goroutine: an elastic
// pool, a limit, or a status file that shows what it samples.
func (c *config) poolWanted() bool {
	return c.poolMax > 0 || c.maxRSS > 0 || c.maxLifetime > 0 || c.statusFile != ""
}

// slotBounds is the range TTIN/TTOU and the pool move within.
func (s *supervisor) slotBounds() (lo, hi int) {
	if s.c.poolMax > 0 {
		return s.c.poolMin, s.c.poolMax
	}
	return 1, maxWorkers
}

// startPool starts the pool goroutine, when something needs it, and says at
// start what it cannot see.
func (s *supervisor) startPool() {
	if !s.c.poolWanted() {
		return
	}
	s.pool = &poolHandle{stop: make(chan struct{}), done: make(chan struct{})}
	var el *pool.Elastic
	if s.c.poolMax > 0 {
		el = pool.NewElastic(s.c.poolMin, s.c.poolMax, s.c.idleTimeout)
		s.log.Info("elastic pool", "min", s.c.poolMin, "max", s.c.poolMax, "idle_timeout", s.c.idleTimeout)
		s.explainQueues()
	}
	var lim *pool.Limits
	if s.c.maxRSS > 0 || s.c.maxLifetime > 0 {
		lim = pool.NewLimits(s.c.maxRSS, s.c.maxLifetime, rand.Float64, s.c.backoffMin, s.c.backoffMax)
	}
	s.publishPool()
	r := &poolRunner{p: s.pool, events: s.events, elastic: el, limits: lim, rr: s.rr,
		listeners: len(s.listeners), usage: procstat.Supported}
	go r.run()
}

// explainQueues logs, at start, which listeners the elastic pool cannot see.
func (s *supervisor) explainQueues() {
	readable := 0
	for _, l := range s.listeners {
		if s.rr != nil {
			readable++ // prefork's own pending connections
			continue
		}
		if !procstat.AcceptQueueSupported {
			continue
		}
		if _, err := procstat.AcceptQueue(l.FD); err != nil {
			s.log.Warn(fmt.Sprintf("-n %d:%d: the accept queue of %s listener %s cannot be read (%v); the pool sizes from the other listeners",
				s.c.poolMin, s.c.poolMax, l.Spec.Network, l.Bound(), err))
			continue
		}
		readable++
	}
	if readable == 0 {
		why := "no listener's accept queue can be read"
		if !procstat.AcceptQueueSupported {
			why = "macOS cannot read a listener's accept queue"
		}
		s.log.Warn(fmt.Sprintf("-n %d:%d: %s, so the pool cannot see connections wait: it stays at %d workers and moves only with TTIN/TTOU (--mode rr sizes it from prefork's own queue)",
			s.c.poolMin, s.c.poolMax, why, s.c.poolMin))
	}
}

// stopPool stops the pool goroutine and waits for it.
func (s *supervisor) stopPool() {
	if s.pool != nil {
		close(s.pool.stop)
		<-s.pool.done
	}
}

// publishPool gives the pool goroutine a fresh view; the owner loop calls it
// after every event.
func (s *supervisor) publishPool() {
	if s.pool == nil {
		return
	}
	v := &poolView{slots: len(s.slots), reloading: s.reloadGen != 0, handled: s.pool.handled}
	for _, w := range s.workers {
		v.pids = append(v.pids, w.pid)
	}
	for _, sl := range s.slots {
		w := sl.cur
		if sl.next != nil {
			v.replacing++
		}
		if w == nil {
			continue
		}
		if w.state == stateStarting {
			v.starting++
		}
		v.workers = append(v.workers, pool.Worker{PID: w.pid, Slot: sl.index, Started: w.started,
			Ready: w.state == stateReady, Replaced: sl.next != nil || w.state == stateStopping})
	}
	v.queues = s.queueSockets()
	s.pool.view.Store(v)
}

// queueSockets lists the listening sockets whose accept queues make up each
// listener's: prefork's own, or in reuseport mode every slot's.
func (s *supervisor) queueSockets() []poolQueue {
	var qs []poolQueue
	for i, l := range s.listeners {
		if l.Spec.Network == "udp" {
			continue // no accept queue
		}
		if s.c.mode == modeReuseport {
			for _, sl := range s.slots {
				if i < len(sl.socks) {
					qs = append(qs, poolQueue{i, sl.socks[i]})
				}
			}
		} else {
			qs = append(qs, poolQueue{i, l.FD})
		}
	}
	return qs
}

// handlePool acts on what the pool goroutine asks, after checking it against
// the supervisor's state, which may have moved on since the view it saw.
func (s *supervisor) handlePool(e poolEvent) {
	s.pool.handled++
	if e.stats != nil {
		s.pool.stats = *e.stats
	}
	if s.stopping {
		return
	}
	if e.scale != 0 {
		lo, hi := s.slotBounds()
		n := min(max(len(s.slots)+e.scale, lo), hi)
		switch {
		case n > len(s.slots):
			s.log.Info("pool: connections wait; adding workers", "workers", len(s.slots), "to", n, "waiting", e.waiting)
		case n < len(s.slots):
			s.log.Info("pool: idle; stopping a worker", "workers", len(s.slots), "to", n, "idle_timeout", s.c.idleTimeout)
		}
		if err := s.scaleTo(n); err != nil {
			s.log.Error("pool: cannot add a worker", "err", err)
		}
	}
	for _, r := range e.replace {
		if w := s.workers[r.PID]; w != nil && w == w.slot.cur && w.state == stateReady && w.slot.next == nil {
			u, age := s.pool.stats.usage[w.pid], time.Since(w.started)
			s.log.Info("replacing worker", "slot", w.slot.index, "pid", w.pid, "why", r.Why,
				"rss", u.RSS, "age", age.Round(time.Millisecond))
			if r.Why == pool.ReasonMaxRSS && w.why == pool.ReasonMaxRSS && age < time.Minute {
				s.log.Warn("a fresh worker is over --max-rss already: the limit is likely below what a worker needs",
					"slot", w.slot.index, "max_rss", s.c.maxRSS, "rss", u.RSS, "age", age.Round(time.Millisecond))
			}
			s.replace(w.slot, r.Why)
		}
	}
}

// poolRunner is the pool goroutine. It owns the policy's memory (elastic,
// limits) and nothing of the supervisor's.
type poolRunner struct {
	p         *poolHandle
	events    chan<- event
	elastic   *pool.Elastic // nil: a fixed pool
	limits    *pool.Limits  // nil: no --max-rss or --max-lifetime
	rr        *rr.Dispatcher
	listeners int
	usage     bool   // /proc can be read here
	sent      uint64 // pool events sent
}

func (r *poolRunner) run() {
	defer close(r.p.done)
	t := time.NewTicker(pool.Tick)
	defer t.Stop()
	var (
		use    map[int]procstat.Usage // the last /proc reading, and the base of the next CPU rate
		spare  map[int]procstat.Usage // the reading before, refilled by the next one
		prevAt time.Time
		mark   uint32 // rr: the dispatcher's sequence number at the previous tick
		sent   poolStats
	)
	for tick := 0; ; tick++ {
		var now time.Time
		select {
		case <-r.p.stop:
			return
		case now = <-t.C:
		}
		v := r.p.view.Load()
		queues := make([]int, r.listeners)
		for i := range queues {
			queues[i] = -1
		}
		waiting := -1
		for _, q := range v.queues {
			if n, err := procstat.AcceptQueue(q.fd); err == nil {
				queues[q.listener] = max(queues[q.listener], 0) + n
				waiting = max(waiting, 0) + n
			}
		}
		if r.rr != nil {
			n, next := r.rr.Waiting(mark)
			mark = next
			waiting = max(waiting, 0) + n
		}
		ev := poolEvent{waiting: waiting}
		cpu := -1.0
		if tick%poolUsageTicks == 0 {
			if r.usage {
				if u, err := procstat.GroupUsage(v.pids, spare); err == nil {
					if use != nil {
						cpu = pool.CPURate(use, u, now.Sub(prevAt))
					}
					spare, use, prevAt = use, u, now
				}
			}
			// Figures that did not move are not sent: the owner loop would
			// snapshot and re-encode the status for nothing, and that garbage,
			// every second for as long as prefork runs, is what grew an idle
			// prefork's RSS to the GC's 4 MB floor.
			if !maps.Equal(use, sent.usage) || !slices.Equal(queues, sent.queues) {
				ev.stats = &poolStats{usage: maps.Clone(use), queues: queues}
				sent = *ev.stats
			}
		}
		// Decide only on a view that shows the outcome of every earlier request:
		// ticks that bunch up after a slow sample must not ask twice.
		current := v.handled == r.sent
		if r.elastic != nil && current {
			ev.scale = r.elastic.Decide(pool.Sample{Now: now, Waiting: waiting, Workers: v.slots,
				Starting: v.starting, Reloading: v.reloading, CPU: cpu})
		}
		if r.limits != nil && current && !v.reloading {
			ev.replace = r.limits.Check(v.workers, use, v.replacing, now)
		}
		if ev.scale == 0 && len(ev.replace) == 0 && ev.stats == nil {
			continue
		}
		select {
		case r.events <- ev:
			r.sent++
		case <-r.p.stop:
			return
		}
	}
}
