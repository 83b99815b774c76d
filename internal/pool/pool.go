//go:build linux || darwin

// Package pool is the pool's policy: the elastic worker count (-n MIN:MAX,
// --idle-timeout) and the limits that recycle workers (--max-rss,
// --max-lifetime), as pure decisions over samples, with the readers of their
// option values. It has no goroutine and touches no slot: prefork's pool
// goroutine (pool.go) samples, owns an Elastic and a Limits, and sends what they
// decide to the owner loop, which acts through the slot table.
package pool

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prefork/prefork/internal/procstat"
)

// The sampling period and the constants of the rules. The man page's "Pool
// sizing" section describes them; keep the two in step.
const (
	Tick      = 100 * time.Millisecond // the samples are meant to come this often: the queues are read every Tick
	upAfter   = 200 * time.Millisecond // connections must keep waiting this long (3 samples) before a worker is added
	stepEvery = time.Second            // at most one scale-up step a second
	maxStep   = 32                     // the step doubles up to this many workers (Apache's spawn-rate cap)
	downEvery = time.Second            // once idle, one worker stops a second while the pool stays idle
	maxHold   = 8                      // a regretted scale-down doubles the idle time needed, up to this many times
	idleCPU   = 0.5                    // idle: the pool used less CPU than this share of one CPU per worker it keeps
)

// Sample is what the elastic policy sees at one tick.
type Sample struct {
	Now       time.Time
	Waiting   int     // connections waiting for a worker (< 0: no queue can be read)
	Workers   int     // slots now
	Starting  int     // slots whose worker is not up yet
	Reloading bool    // a rolling reload runs: no scale-down meanwhile
	CPU       float64 // the pool's CPU use, in CPUs, over the last usage period; < 0 unknown or not sampled this tick
}

// Elastic decides the pool size from samples. It is owned by the pool
// goroutine and holds only its own memory of past samples.
type Elastic struct {
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

// NewElastic returns the policy of -n min:max with --idle-timeout idle.
func NewElastic(min, max int, idle time.Duration) *Elastic {
	return &Elastic{min: min, max: max, idle: idle, step: 1, hold: 1}
}

// Decide returns how many workers to add (> 0) or stop (< 0) after sample s;
// 0 leaves the pool as it is. The rules:
//
//   - Waiting: a sample where connections wait in a listener's accept queue (rr:
//     prefork's own pending connections and those a worker has held unacked for
//     a whole tick).
//   - Scale up: connections have waited at every sample for upAfter, the
//     pool is below MAX, no slot's worker is still starting (a starting worker
//     is capacity on the way: counting it avoids overshoot), and the last step was
//     at least stepEvery ago. The first step adds 1 worker; each further
//     step while connections keep waiting adds twice as many as the last, up to
//     maxStep. The step falls back to 1 after stepEvery with no wait.
//     A step is held (nothing added, the step size kept) when the number of
//     waiting connections has more than halved since the step before: the
//     workers already added are draining the backlog, and more would overshoot.
//   - Idle: no connection waits at any sample and, where CPU time can be read,
//     the pool's CPU use stays below idleCPU × (workers − 1) CPUs. A
//     blocking worker waiting in accept uses no CPU.
//   - Scale down: the pool has been idle for --idle-timeout (× hold), it is
//     above MIN, no slot's worker is still starting and no reload runs: one worker
//     stops, then one more every downEvery while the pool stays idle.
//   - No flapping: a scale-up resets the idle run, so no scale-down comes
//     within --idle-timeout of a scale-up; a scale-up within --idle-timeout of
//     a scale-down (the worker was needed after all) doubles the idle time the
//     next scale-down needs, up to maxHold × --idle-timeout; a later
//     scale-up that does not follow a scale-down so closely resets it.
//   - No queue (Waiting < 0): neither up nor down; only TTIN/TTOU move the pool.
func (e *Elastic) Decide(s Sample) int {
	switch {
	case s.Waiting > 0:
		if e.waitStart.IsZero() {
			e.waitStart = s.Now
		}
		e.lastWait = s.Now
		e.quietSince = time.Time{}
	case s.Waiting == 0:
		e.waitStart = time.Time{}
		if e.quietSince.IsZero() {
			e.quietSince = s.Now
		}
		if s.CPU >= 0 && s.CPU >= idleCPU*float64(s.Workers-1) && s.Workers > e.min {
			e.quietSince = s.Now // busy on CPU: the idle run starts again
		}
	default:
		e.waitStart, e.quietSince = time.Time{}, time.Time{}
		return 0
	}
	if !e.lastWait.IsZero() && s.Now.Sub(e.lastWait) >= stepEvery {
		e.step = 1
	}
	if s.Waiting > 0 {
		if s.Now.Sub(e.waitStart) < upAfter || s.Workers >= e.max || s.Starting > 0 ||
			(!e.lastStep.IsZero() && s.Now.Sub(e.lastStep) < stepEvery) {
			return 0
		}
		if !e.lastStep.IsZero() && s.Now.Sub(e.lastStep) < 2*stepEvery && s.Waiting*2 <= e.stepWaiting {
			// The queue more than halved since the last step: the workers
			// added are draining it. Hold this step rather than overshoot.
			e.lastStep, e.stepWaiting = s.Now, s.Waiting
			return 0
		}
		e.lastStep, e.stepWaiting = s.Now, s.Waiting
		n := min(e.step, e.max-s.Workers)
		e.step = min(e.step*2, maxStep)
		switch {
		case !e.lastDown.IsZero() && s.Now.Sub(e.lastDown) < e.idle:
			if !e.regretted {
				e.hold = min(e.hold*2, maxHold)
				e.regretted = true
			}
		default:
			e.hold = 1
		}
		e.lastUp = s.Now
		return n
	}
	need := e.idle * time.Duration(e.hold)
	if s.Workers <= e.min || s.Starting > 0 || s.Reloading || e.quietSince.IsZero() ||
		s.Now.Sub(e.quietSince) < need || (!e.lastUp.IsZero() && s.Now.Sub(e.lastUp) < need) ||
		(!e.lastDown.IsZero() && s.Now.Sub(e.lastDown) < downEvery) {
		return 0
	}
	e.lastDown, e.regretted = s.Now, false
	return -1
}

// Worker is a slot's serving worker as the limits see it.
type Worker struct {
	PID      int
	Slot     int
	Started  time.Time
	Ready    bool
	Replaced bool // its slot already brings up a replacement, or it is stopping
}

// Reasons a slot's worker was last replaced, as the status file shows them.
const (
	ReasonMaxRSS      = "max-rss"
	ReasonMaxLifetime = "max-lifetime"
)

// Limits decides which worker to replace for --max-rss and --max-lifetime.
// It is owned by the pool goroutine.
type Limits struct {
	maxRSS     int64         // bytes; 0 = off
	lifetime   time.Duration // 0 = off
	jitter     func() float64
	backoffMin time.Duration // the wait before asking again to replace a worker whose replacement failed
	backoffMax time.Duration

	deadline map[int]time.Time // pid → when --max-lifetime replaces it
	asked    map[int]retry     // pid → when it may be asked for again
}

type retry struct {
	next  time.Time
	delay time.Duration
}

// NewLimits returns the limits of --max-rss maxRSS (bytes, 0 = off) and
// --max-lifetime lifetime (0 = off). jitter draws each worker's share of the
// lifetime's 10 % spread, in [0, 1); nil draws none. A worker whose
// replacement failed is asked for again after a backoff from backoffMin,
// doubling up to backoffMax.
func NewLimits(maxRSS int64, lifetime time.Duration, jitter func() float64, backoffMin, backoffMax time.Duration) *Limits {
	return &Limits{maxRSS: maxRSS, lifetime: lifetime, jitter: jitter, backoffMin: backoffMin, backoffMax: backoffMax,
		deadline: map[int]time.Time{}, asked: map[int]retry{}}
}

// lifetimeOf is when a worker started at started reaches --max-lifetime: DUR
// less up to 10 % of it, drawn once per worker so that slots started together
// do not recycle together, and DUR stays the upper bound.
func (l *Limits) lifetimeOf(pid int, started time.Time) time.Time {
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

// Replace asks the owner loop to replace a worker.
type Replace struct {
	PID int
	Why string // ReasonMaxRSS or ReasonMaxLifetime
}

// Check returns the workers to replace now and why. For --max-rss at most one
// replacement runs at a time (replacing > 0: none is asked for), as a reload
// does, so that a leak common to every worker never restarts them all at once;
// the largest process group over the limit goes first. --max-lifetime is a
// bound on each worker's age, so every worker past its lifetime is asked for
// at once (its slot's own replacement keeps its capacity; the jitter already
// spreads workers started together); waiting for one another, the last of N
// would outlive DUR by N readiness times. A worker whose replacement failed
// (it still serves) is asked for again after a backoff that doubles from
// --backoff-min to --backoff-max. use may be nil when no /proc sample is at hand.
func (l *Limits) Check(ws []Worker, use map[int]procstat.Usage, replacing int, now time.Time) []Replace {
	live := make(map[int]bool, len(ws))
	for _, w := range ws {
		live[w.PID] = true
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
	var out []Replace
	best, bestRSS := 0, int64(0)
	for _, w := range ws {
		if !w.Ready || w.Replaced {
			continue
		}
		if r, ok := l.asked[w.PID]; ok && now.Before(r.next) {
			continue
		}
		if u, ok := use[w.PID]; ok && replacing == 0 && l.maxRSS > 0 && u.RSS > l.maxRSS && u.RSS > bestRSS {
			best, bestRSS = w.PID, u.RSS
		}
		if l.lifetime > 0 && !now.Before(l.lifetimeOf(w.PID, w.Started)) {
			out = append(out, Replace{w.PID, ReasonMaxLifetime})
		}
	}
	if best != 0 {
		out = slices.DeleteFunc(out, func(r Replace) bool { return r.PID == best })
		out = append([]Replace{{best, ReasonMaxRSS}}, out...)
	}
	for _, r := range out {
		a := l.asked[r.PID]
		a.delay = min(max(a.delay*2, l.backoffMin), l.backoffMax)
		a.next = now.Add(a.delay)
		l.asked[r.PID] = a
	}
	return out
}

// CPURate is the CPU use, in CPUs, of the process groups present in both
// samples, between them; a group that left or arrived in between is not counted.
func CPURate(prev, cur map[int]procstat.Usage, elapsed time.Duration) float64 {
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

// ParseRange reads -n MIN:MAX: 1 <= MIN <= MAX <= most.
func ParseRange(v string, most int) (lo, hi int, err error) {
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
	case hi > most:
		return 0, 0, fmt.Errorf("%d workers is more than prefork runs (at most %d)", hi, most)
	}
	return lo, hi, nil
}

// ParseSize reads --max-rss: a whole number of bytes, or of K, M, G or T
// (binary multiples, as PM2 reads them: 1K = 1024 bytes), such as 512M or 2G;
// the unit's case does not matter. It must be at least 1M.
func ParseSize(v string) (int64, error) {
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
