//go:build linux || darwin

// This file holds the pool: the elastic worker count (-n MIN:MAX,
// --idle-timeout) and the limits that recycle workers (--max-rss,
// --max-lifetime), with their options. Its first part is the policy: the
// decisions are pure functions of a sample, and nothing there touches a slot.
// Its second part runs them: the pool goroutine samples on a ticker and sends
// what they decide to the owner loop, which acts through the slot table.
package main

import (
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prefork/prefork/internal/procstat"
	"github.com/prefork/prefork/internal/rr"
)

// The sampling periods and the constants of the rules. The man page's "Pool
// sizing" section describes them; keep the two in step.
const (
	poolTick       = 100 * time.Millisecond // the queues are read this often
	poolUsageTicks = 10                     // /proc is read every 10 ticks (1 s)
	poolUpAfter    = 200 * time.Millisecond // connections must keep waiting this long (3 samples) before a worker is added
	poolStepEvery  = time.Second            // at most one scale-up step a second
	poolMaxStep    = 32                     // the step doubles up to this many workers (Apache's spawn-rate cap)
	poolDownEvery  = time.Second            // once idle, one worker stops a second while the pool stays idle
	poolMaxHold    = 8                      // a regretted scale-down doubles the idle time needed, up to this many times
	poolIdleCPU    = 0.5                    // idle: the pool used less CPU than this share of one CPU per worker it keeps
)

// poolSample is what the elastic policy sees at one tick.
type poolSample struct {
	now       time.Time
	waiting   int     // connections waiting for a worker (< 0: no queue can be read)
	workers   int     // slots now
	starting  int     // slots whose worker is not up yet
	reloading bool    // a rolling reload runs: no scale-down meanwhile
	cpu       float64 // the pool's CPU use, in CPUs, over the last usage period; < 0 unknown or not sampled this tick
}

// elastic decides the pool size from samples. It is owned by the pool
// goroutine and holds only its own memory of past samples.
type elastic struct {
	min, max int
	idle     time.Duration

	waitStart   time.Time // first sample of the current run with connections waiting; zero when the last sample had none
	lastWait    time.Time // last sample with connections waiting
	quietSince  time.Time // start of the current idle run; zero while not idle
	lastUp      time.Time // last scale-up
	lastStep    time.Time // last scale-up step, taken or held
	stepWaiting int       // connections waiting at lastStep
	lastDown    time.Time
	regretted   bool // a scale-up already followed lastDown too soon
	step        int  // workers the next scale-up step adds
	hold        int  // multiplier of the idle time the next scale-down needs
}

func newElastic(min, max int, idle time.Duration) *elastic {
	return &elastic{min: min, max: max, idle: idle, step: 1, hold: 1}
}

// decide returns how many workers to add (> 0) or stop (< 0) after sample s;
// 0 leaves the pool as it is. The rules:
//
//   - Waiting: a sample where connections wait in a listener's accept queue (rr:
//     prefork's own pending connections and those a worker has held unacked for
//     a whole tick).
//   - Scale up: connections have waited at every sample for poolUpAfter, the
//     pool is below MAX, no slot's worker is still starting (a starting worker
//     is capacity on the way: counting it avoids overshoot), and the last step was
//     at least poolStepEvery ago. The first step adds 1 worker; each further
//     step while connections keep waiting adds twice as many as the last, up to
//     poolMaxStep. The step falls back to 1 after poolStepEvery with no wait.
//     A step is held (nothing added, the step size kept) when the number of
//     waiting connections has more than halved since the step before: the
//     workers already added are draining the backlog, and more would overshoot.
//   - Idle: no connection waits at any sample and, where CPU time can be read,
//     the pool's CPU use stays below poolIdleCPU × (workers − 1) CPUs. A
//     blocking worker waiting in accept uses no CPU.
//   - Scale down: the pool has been idle for --idle-timeout (× hold), it is
//     above MIN, no slot's worker is still starting and no reload runs: one worker
//     stops, then one more every poolDownEvery while the pool stays idle.
//   - No flapping: a scale-up resets the idle run, so no scale-down comes
//     within --idle-timeout of a scale-up; a scale-up within --idle-timeout of
//     a scale-down (the worker was needed after all) doubles the idle time the
//     next scale-down needs, up to poolMaxHold × --idle-timeout; a later
//     scale-up that does not follow a scale-down so closely resets it.
//   - No queue (waiting < 0): neither up nor down; only TTIN/TTOU move the pool.
func (e *elastic) decide(s poolSample) int {
	switch {
	case s.waiting > 0:
		if e.waitStart.IsZero() {
			e.waitStart = s.now
		}
		e.lastWait = s.now
		e.quietSince = time.Time{}
	case s.waiting == 0:
		e.waitStart = time.Time{}
		if e.quietSince.IsZero() {
			e.quietSince = s.now
		}
		if s.cpu >= 0 && s.cpu >= poolIdleCPU*float64(s.workers-1) && s.workers > e.min {
			e.quietSince = s.now // busy on CPU: the idle run starts again
		}
	default:
		e.waitStart, e.quietSince = time.Time{}, time.Time{}
		return 0
	}
	if !e.lastWait.IsZero() && s.now.Sub(e.lastWait) >= poolStepEvery {
		e.step = 1
	}
	if s.waiting > 0 {
		if s.now.Sub(e.waitStart) < poolUpAfter || s.workers >= e.max || s.starting > 0 ||
			(!e.lastStep.IsZero() && s.now.Sub(e.lastStep) < poolStepEvery) {
			return 0
		}
		if !e.lastStep.IsZero() && s.now.Sub(e.lastStep) < 2*poolStepEvery && s.waiting*2 <= e.stepWaiting {
			// The queue more than halved since the last step: the workers
			// added are draining it. Hold this step rather than overshoot.
			e.lastStep, e.stepWaiting = s.now, s.waiting
			return 0
		}
		e.lastStep, e.stepWaiting = s.now, s.waiting
		n := min(e.step, e.max-s.workers)
		e.step = min(e.step*2, poolMaxStep)
		switch {
		case !e.lastDown.IsZero() && s.now.Sub(e.lastDown) < e.idle:
			if !e.regretted {
				e.hold = min(e.hold*2, poolMaxHold)
				e.regretted = true
			}
		default:
			e.hold = 1
		}
		e.lastUp = s.now
		return n
	}
	need := e.idle * time.Duration(e.hold)
	if s.workers <= e.min || s.starting > 0 || s.reloading || e.quietSince.IsZero() ||
		s.now.Sub(e.quietSince) < need || (!e.lastUp.IsZero() && s.now.Sub(e.lastUp) < need) ||
		(!e.lastDown.IsZero() && s.now.Sub(e.lastDown) < poolDownEvery) {
		return 0
	}
	e.lastDown, e.regretted = s.now, false
	return -1
}

// poolWorker is a slot's serving worker as the limits see it.
type poolWorker struct {
	pid      int
	slot     int
	started  time.Time
	ready    bool
	replaced bool // its slot already brings up a replacement, or it is stopping
}

// Reasons a slot's worker was last replaced, as the status file shows them.
const (
	reasonMaxRSS      = "max-rss"
	reasonMaxLifetime = "max-lifetime"
)

// limits decides which worker to replace for --max-rss and --max-lifetime.
// It is owned by the pool goroutine.
type limits struct {
	maxRSS     int64         // bytes; 0 = off
	lifetime   time.Duration // 0 = off
	jitter     func() float64
	backoffMin time.Duration // the wait before asking again to replace a worker whose replacement failed
	backoffMax time.Duration

	deadline map[int]time.Time // pid → when --max-lifetime replaces it
	asked    map[int]poolRetry // pid → when it may be asked for again
}

type poolRetry struct {
	next  time.Time
	delay time.Duration
}

func newLimits(maxRSS int64, lifetime time.Duration, jitter func() float64, backoffMin, backoffMax time.Duration) *limits {
	return &limits{maxRSS: maxRSS, lifetime: lifetime, jitter: jitter, backoffMin: backoffMin, backoffMax: backoffMax,
		deadline: map[int]time.Time{}, asked: map[int]poolRetry{}}
}

// lifetimeOf is when a worker started at started reaches --max-lifetime: DUR
// less up to 10 % of it, drawn once per worker so that slots started together
// do not recycle together, and DUR stays the upper bound.
func (l *limits) lifetimeOf(pid int, started time.Time) time.Time {
	d, ok := l.deadline[pid]
	if !ok {
		j := 0.0
		if l.jitter != nil {
			j = l.jitter()
		}
		d = started.Add(l.lifetime - time.Duration(j*float64(l.lifetime)/10))
		l.deadline[pid] = d
	}
	return d
}

// poolReplace asks the owner loop to replace a worker.
type poolReplace struct {
	pid int
	why string
}

// check returns the workers to replace now and why. For --max-rss at most one
// replacement runs at a time (replacing > 0: none is asked for), as a reload
// does, so that a leak common to every worker never restarts them all at once;
// the largest process group over the limit goes first. --max-lifetime is a
// bound on each worker's age, so every worker past its lifetime is asked for
// at once (its slot's own replacement keeps its capacity; the jitter already
// spreads workers started together); waiting for one another, the last of N
// would outlive DUR by N readiness times. A worker whose replacement failed
// (it still serves) is asked for again after a backoff that doubles from
// --backoff-min to --backoff-max. use may be nil when no /proc sample is at hand.
func (l *limits) check(ws []poolWorker, use map[int]procstat.Usage, replacing int, now time.Time) []poolReplace {
	live := make(map[int]bool, len(ws))
	for _, w := range ws {
		live[w.pid] = true
	}
	for pid := range l.deadline {
		if !live[pid] {
			delete(l.deadline, pid)
		}
	}
	for pid := range l.asked {
		if !live[pid] {
			delete(l.asked, pid)
		}
	}
	var out []poolReplace
	best, bestRSS := 0, int64(0)
	for _, w := range ws {
		if !w.ready || w.replaced {
			continue
		}
		if r, ok := l.asked[w.pid]; ok && now.Before(r.next) {
			continue
		}
		if u, ok := use[w.pid]; ok && replacing == 0 && l.maxRSS > 0 && u.RSS > l.maxRSS && u.RSS > bestRSS {
			best, bestRSS = w.pid, u.RSS
		}
		if l.lifetime > 0 && !now.Before(l.lifetimeOf(w.pid, w.started)) {
			out = append(out, poolReplace{w.pid, reasonMaxLifetime})
		}
	}
	if best != 0 {
		out = slices.DeleteFunc(out, func(r poolReplace) bool { return r.pid == best })
		out = append([]poolReplace{{best, reasonMaxRSS}}, out...)
	}
	for _, r := range out {
		a := l.asked[r.pid]
		a.delay = min(max(a.delay*2, l.backoffMin), l.backoffMax)
		a.next = now.Add(a.delay)
		l.asked[r.pid] = a
	}
	return out
}

// cpuRate is the CPU use, in CPUs, of the process groups present in both
// samples, between them; a group that left or arrived in between is not counted.
func cpuRate(prev, cur map[int]procstat.Usage, elapsed time.Duration) float64 {
	if elapsed <= 0 {
		return -1
	}
	var d time.Duration
	for pid, u := range cur {
		if p, ok := prev[pid]; ok && u.CPU > p.CPU {
			d += u.CPU - p.CPU
		}
	}
	return d.Seconds() / elapsed.Seconds()
}

// parsePoolRange reads -n MIN:MAX: 1 <= MIN <= MAX <= maxWorkers.
func parsePoolRange(v string) (lo, hi int, err error) {
	a, b, _ := strings.Cut(v, ":")
	lo, err1 := strconv.Atoi(a)
	hi, err2 := strconv.Atoi(b)
	switch {
	case err1 != nil || err2 != nil || a == "" || b == "" || a[0] == '+' || b[0] == '+':
		return 0, 0, fmt.Errorf("%q is not MIN:MAX, two numbers of workers such as 2:16", v)
	case lo < 1:
		return 0, 0, fmt.Errorf("%q: MIN must be at least 1", v)
	case hi < lo:
		return 0, 0, fmt.Errorf("%q: MAX is below MIN", v)
	case hi > maxWorkers:
		return 0, 0, fmt.Errorf("%d workers is more than prefork runs (at most %d)", hi, maxWorkers)
	}
	return lo, hi, nil
}

// parseSize reads --max-rss: a whole number of bytes, or of K, M, G or T
// (binary multiples, as PM2 reads them: 1K = 1024 bytes), such as 512M or 2G;
// the unit's case does not matter. It must be at least 1M.
func parseSize(v string) (int64, error) {
	i := 0
	for i < len(v) && v[i] >= '0' && v[i] <= '9' {
		i++
	}
	shift, ok := map[string]uint{"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[strings.ToUpper(v[i:])]
	if i == 0 || !ok {
		return 0, fmt.Errorf("%q is not a size such as 512M, 2G or a number of bytes", v)
	}
	n, err := strconv.ParseInt(v[:i], 10, 64)
	if err != nil || n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("%q is too large", v)
	}
	n <<= shift
	if n < 1<<20 {
		return 0, fmt.Errorf("%q is below 1M: every worker would be replaced as soon as it starts", v)
	}
	return n, nil
}

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
// poolTick, /proc every poolUsageTicks ticks), decides, and sends poolEvents
// back; the owner loop validates each against its own state and acts through
// slots.go (scaleTo, replace).

// poolView is what the pool goroutine knows of the supervisor: a copy the owner
// loop publishes, never shared state.
type poolView struct {
	workers   []poolWorker // every slot's serving worker
	pids      []int        // every worker, serving or not: their process groups are sampled
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
	scale   int           // workers to add (> 0) or stop (< 0)
	waiting int           // connections waiting, for the log line of a scale-up
	replace []poolReplace // workers to replace, and why
	stats   *poolStats
}

// pool is the owner loop's side of the pool: the published view, the latest
// stats, and how to stop the goroutine.
type pool struct {
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
	s.pool = &pool{stop: make(chan struct{}), done: make(chan struct{})}
	var el *elastic
	if s.c.poolMax > 0 {
		el = newElastic(s.c.poolMin, s.c.poolMax, s.c.idleTimeout)
		s.log.Info("elastic pool", "min", s.c.poolMin, "max", s.c.poolMax, "idle_timeout", s.c.idleTimeout)
		s.explainQueues()
	}
	var lim *limits
	if s.c.maxRSS > 0 || s.c.maxLifetime > 0 {
		lim = newLimits(s.c.maxRSS, s.c.maxLifetime, rand.Float64, s.c.backoffMin, s.c.backoffMax)
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
		v.workers = append(v.workers, poolWorker{pid: w.pid, slot: sl.index, started: w.started,
			ready: w.state == stateReady, replaced: sl.next != nil || w.state == stateStopping})
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
		if w := s.workers[r.pid]; w != nil && w == w.slot.cur && w.state == stateReady && w.slot.next == nil {
			u, age := s.pool.stats.usage[w.pid], time.Since(w.started)
			s.log.Info("replacing worker", "slot", w.slot.index, "pid", w.pid, "why", r.why,
				"rss", u.RSS, "age", age.Round(time.Millisecond))
			if r.why == reasonMaxRSS && w.why == reasonMaxRSS && age < time.Minute {
				s.log.Warn("a fresh worker is over --max-rss already: the limit is likely below what a worker needs",
					"slot", w.slot.index, "max_rss", s.c.maxRSS, "rss", u.RSS, "age", age.Round(time.Millisecond))
			}
			s.replace(w.slot, r.why)
		}
	}
}

// poolRunner is the pool goroutine. It owns the policy's memory (elastic,
// limits) and nothing of the supervisor's.
type poolRunner struct {
	p         *pool
	events    chan<- event
	elastic   *elastic // nil: a fixed pool
	limits    *limits  // nil: no --max-rss or --max-lifetime
	rr        *rr.Dispatcher
	listeners int
	usage     bool   // /proc can be read here
	sent      uint64 // pool events sent
}

func (r *poolRunner) run() {
	defer close(r.p.done)
	t := time.NewTicker(poolTick)
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
						cpu = cpuRate(use, u, now.Sub(prevAt))
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
			ev.scale = r.elastic.decide(poolSample{now: now, waiting: waiting, workers: v.slots,
				starting: v.starting, reloading: v.reloading, cpu: cpu})
		}
		if r.limits != nil && current && !v.reloading {
			ev.replace = r.limits.check(v.workers, use, v.replacing, now)
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
