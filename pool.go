//go:build linux || darwin

// This file holds the pool policy: the elastic worker count (-n MIN:MAX,
// --idle-timeout) and the limits that recycle workers (--max-rss,
// --max-lifetime), with their options. The decisions are pure functions of a
// sample; poolrun.go samples on a ticker and sends what they decide to the
// owner loop, which acts through the slot table. Nothing here touches a slot.
package main

import (
	"fmt"
	"github.com/prefork/prefork/internal/procstat"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
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
