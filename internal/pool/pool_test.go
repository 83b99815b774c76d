// This file tests the pool policy's decisions sample by sample, with a fake
// clock: samples in, decisions out, in microseconds.
package pool

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prefork/prefork/internal/procstat"
)

// poolSim feeds an elastic policy samples every Tick and applies what it
// decides to a simulated pool whose new workers are up after startsIn.
type poolSim struct {
	t        *testing.T
	e        *Elastic
	now      time.Time
	workers  int
	pending  []time.Time // when each starting worker is up
	startsIn time.Duration
	cpu      float64
	ups      int
	log      []string
}

func newPoolSim(t *testing.T, min, max int, idle time.Duration) *poolSim {
	return &poolSim{t: t, e: NewElastic(min, max, idle), now: time.Unix(1e9, 0), workers: min, startsIn: 300 * time.Millisecond, cpu: -1}
}

// run advances d with waiting(now) connections waiting at each sample.
func (p *poolSim) run(d time.Duration, waiting func(workers int) int) {
	for end := p.now.Add(d); p.now.Before(end); p.now = p.now.Add(Tick) {
		up := p.pending[:0]
		for _, at := range p.pending {
			if p.now.Before(at) {
				up = append(up, at)
			}
		}
		p.pending = up
		delta := p.e.Decide(Sample{Now: p.now, Waiting: waiting(p.workers), Workers: p.workers, Starting: len(p.pending), CPU: p.cpu})
		if delta != 0 {
			p.workers += delta
			p.ups += b2i(delta > 0)
			p.log = append(p.log, p.now.Format("05.0")+" "+strconv.Itoa(p.workers))
			for i := 0; i < delta; i++ {
				p.pending = append(p.pending, p.now.Add(p.startsIn))
			}
		}
		if p.workers < p.e.min || p.workers > p.e.max {
			p.t.Fatalf("pool left %d..%d: %d", p.e.min, p.e.max, p.workers)
		}
	}
}

// demand is a load that keeps need workers busy: what exceeds the pool waits.
func demand(need int) func(int) int { return func(w int) int { return max(need-w, 0) } }

func TestElasticGrowsWhileConnectionsWaitAndDoublesItsStep(t *testing.T) {
	p := newPoolSim(t, 1, 16, 10*time.Second)
	p.run(150*time.Millisecond, demand(100))
	if p.workers != 1 {
		t.Fatalf("grew after %d samples of waiting: %v", 2, p.log)
	}
	p.run(6*time.Second, demand(100))
	if p.workers != 16 {
		t.Fatalf("workers %d after 6s of waiting, want 16: %v", p.workers, p.log)
	}
	// steps of 1, 2, 4, 8 a second apart
	if got := strings.Join(p.log, ","); got != "40.2 2,41.2 4,42.2 8,43.2 16" {
		t.Fatalf("scale-up steps %v, want +1 +2 +4 +8 a second apart", got)
	}
}

func TestElasticWaitsForStartingWorkers(t *testing.T) {
	p := newPoolSim(t, 1, 16, 10*time.Second)
	p.startsIn = 5 * time.Second // slow starts: no new step while the last one starts
	p.run(4*time.Second, demand(100))
	if p.workers != 2 {
		t.Fatalf("workers %d while the first added worker still starts, want 2: %v", p.workers, p.log)
	}
}

func TestElasticStopsOnceTheQueueStaysEmpty(t *testing.T) {
	p := newPoolSim(t, 1, 4, 2*time.Second)
	p.run(5*time.Second, demand(8))
	if p.workers != 4 {
		t.Fatalf("workers %d under load, want 4: %v", p.workers, p.log)
	}
	p.log = nil
	p.run(1900*time.Millisecond, demand(0))
	if p.workers != 4 {
		t.Fatalf("stopped a worker before --idle-timeout: %v", p.log)
	}
	p.run(200*time.Millisecond, demand(0))
	if p.workers != 3 {
		t.Fatalf("workers %d after --idle-timeout idle, want 3: %v", p.workers, p.log)
	}
	p.run(2*time.Second, demand(0))
	if p.workers != 1 {
		t.Fatalf("workers %d, want 1 (one a second once idle): %v", p.workers, p.log)
	}
	p.run(30*time.Second, demand(0))
	if p.workers != 1 {
		t.Fatalf("went below MIN: %v", p.log)
	}
}

func TestElasticIsNotIdleWhileTheQueueFlickers(t *testing.T) {
	p := newPoolSim(t, 1, 4, 2*time.Second)
	p.workers = 4
	i := 0
	p.run(20*time.Second, func(int) int { i++; return b2i(i%15 == 0) }) // a connection waits every 1.5s, never for long
	if p.workers != 4 || len(p.log) != 0 {
		t.Fatalf("pool moved on a flickering queue: %v", p.log)
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestElasticIsNotIdleWhileBusyOnCPU(t *testing.T) {
	p := newPoolSim(t, 1, 4, time.Second)
	p.workers, p.cpu = 4, 2.0 // 2 CPUs busy: three workers at half a CPU each would be 1.5
	p.run(10*time.Second, demand(0))
	if p.workers != 4 {
		t.Fatalf("stopped workers while the pool used 2 CPUs: %v", p.log)
	}
	p.cpu = 0.01
	p.run(5*time.Second, demand(0))
	if p.workers != 1 {
		t.Fatalf("workers %d once CPU use fell, want 1: %v", p.workers, p.log)
	}
}

func TestElasticDoesNotFlap(t *testing.T) {
	// A load that needs exactly 3 workers: at 4 the queue is empty, at 3 a
	// connection waits briefly every 5s, at 2 connections keep waiting.
	p := newPoolSim(t, 1, 8, 2*time.Second)
	p.workers = 4
	i := 0
	p.run(120*time.Second, func(w int) int {
		i++
		switch {
		case w >= 4:
			return 0
		case w == 3:
			return b2i(i%50 == 0)
		}
		return 1
	})
	// each regretted scale-down doubles the idle time the next needs: 2, 4,
	// 8, 16, 16… seconds, so at most a handful of cycles in two minutes.
	if p.ups > 3 || p.workers != 3 {
		t.Fatalf("%d scale-ups in 120s, %d workers at the end: flapping: %v", p.ups, p.workers, p.log)
	}
	if p.e.hold < 4 {
		t.Fatalf("hold %d after regretted scale-downs, want it doubled", p.e.hold)
	}
}

func TestElasticWithoutAQueueStaysPut(t *testing.T) {
	p := newPoolSim(t, 1, 4, time.Second)
	p.workers = 3
	p.run(10*time.Second, func(int) int { return -1 })
	if p.workers != 3 {
		t.Fatalf("moved without a readable queue: %v", p.log)
	}
}

func TestElasticKeepsStillDuringAReload(t *testing.T) {
	e := NewElastic(1, 4, time.Second)
	now := time.Unix(1e9, 0)
	for i := 0; i < 50; i++ {
		if d := e.Decide(Sample{Now: now, Workers: 4, Reloading: true, CPU: -1}); d != 0 {
			t.Fatalf("decided %d during a reload", d)
		}
		now = now.Add(Tick)
	}
}

// asked is what Check returned, as "pid why" words.
func asked(rs []Replace) string {
	var b []string
	for _, r := range rs {
		b = append(b, fmt.Sprint(r.PID, " ", r.Why))
	}
	return strings.Join(b, ", ")
}

func TestLimitsMaxRSSReplacesTheLargestFirst(t *testing.T) {
	now := time.Unix(1e9, 0)
	l := NewLimits(100<<20, 0, nil, time.Second, 8*time.Second)
	ws := []Worker{{PID: 10, Ready: true}, {PID: 11, Ready: true}, {PID: 12, Ready: true}, {PID: 13, Ready: false}}
	use := map[int]procstat.Usage{10: {RSS: 50 << 20}, 11: {RSS: 150 << 20}, 12: {RSS: 300 << 20}, 13: {RSS: 900 << 20}}
	for _, c := range []struct {
		after     time.Duration
		replacing int
		want      string
		why       string
	}{
		{0, 0, "12 max-rss", "the largest first (13 is not ready)"},
		{0, 1, "", "one replacement at a time"},
		{10 * time.Millisecond, 0, "11 max-rss", "12's replacement failed: it still serves and backs off"},
		{500 * time.Millisecond, 0, "", "both back off"},
		{1100 * time.Millisecond, 0, "12 max-rss", "12 again after its backoff"},
		{2 * time.Second, 0, "11 max-rss", "11 again after its backoff"},
		{2500 * time.Millisecond, 0, "", "12's second failure doubled its backoff to 2s"},
	} {
		if got := asked(l.Check(ws, use, c.replacing, now.Add(c.after))); got != c.want {
			t.Fatalf("at +%v: Check = %q, want %q (%s)", c.after, got, c.want, c.why)
		}
	}
	ws[2].Replaced = true
	if got := asked(l.Check(ws, use, 0, now.Add(time.Hour))); got != "11 max-rss" {
		t.Fatalf("Check = %q, want 11 (12 is being replaced)", got)
	}
}

// Every worker past its lifetime is asked for at once, whatever else is being
// replaced: a worker never waits for the others' readiness beyond DUR.
func TestLimitsMaxLifetimeWithJitter(t *testing.T) {
	start := time.Unix(1e9, 0)
	j := []float64{0, 0.999, 0.5}
	l := NewLimits(0, 100*time.Second, func() float64 { v := j[0]; j = j[1:]; return v }, time.Second, time.Minute)
	ws := []Worker{{PID: 1, Ready: true, Started: start}, {PID: 2, Ready: true, Started: start}, {PID: 3, Ready: true, Started: start}}
	if got := asked(l.Check(ws, nil, 0, start.Add(89900*time.Millisecond))); got != "" {
		t.Fatalf("asked for %q before 90%% of its lifetime", got)
	}
	if got := asked(l.Check(ws, nil, 0, start.Add(90100*time.Millisecond))); got != "2 max-lifetime" {
		t.Fatalf("Check = %q, want 2 (jitter 0.999 → 90.01s)", got)
	}
	ws[1].Replaced = true
	if got := asked(l.Check(ws, nil, 1, start.Add(95100*time.Millisecond))); got != "3 max-lifetime" {
		t.Fatalf("Check = %q, want 3 at 95s, while 2 is being replaced", got)
	}
	// 3's replacement failed (it still serves): it backs off for 1s, then is
	// asked for again together with 1, due at 100s (no jitter)
	if got := asked(l.Check(ws, nil, 1, start.Add(95500*time.Millisecond))); got != "" {
		t.Fatalf("Check = %q, want none: 1 is not due, 3 backs off", got)
	}
	if got := asked(l.Check(ws, nil, 1, start.Add(100*time.Second))); got != "1 max-lifetime, 3 max-lifetime" {
		t.Fatalf("Check = %q, want 1 and 3 at 100s", got)
	}
	// Two due together are asked for together.
	l2 := NewLimits(0, 10*time.Second, nil, time.Second, time.Minute)
	if got := asked(l2.Check(ws[:1:1], nil, 0, start.Add(10*time.Second))); got != "1 max-lifetime" {
		t.Fatalf("Check = %q", got)
	}
	ws2 := []Worker{{PID: 4, Ready: true, Started: start}, {PID: 5, Ready: true, Started: start}}
	if got := asked(l2.Check(ws2, nil, 1, start.Add(10*time.Second))); got != "4 max-lifetime, 5 max-lifetime" {
		t.Fatalf("Check = %q, want both due workers at once", got)
	}
	// gone workers are forgotten
	l.Check(nil, nil, 0, start)
	if len(l.deadline) != 0 || len(l.asked) != 0 {
		t.Fatalf("kept state of gone workers: %v %v", l.deadline, l.asked)
	}
}

func TestCPURate(t *testing.T) {
	prev := map[int]procstat.Usage{1: {CPU: time.Second}, 2: {CPU: 5 * time.Second}}
	cur := map[int]procstat.Usage{1: {CPU: 1500 * time.Millisecond}, 3: {CPU: time.Hour}}
	if r := CPURate(prev, cur, time.Second); r != 0.5 {
		t.Fatalf("cpuRate = %v, want 0.5 (2 left, 3 arrived)", r)
	}
}

func TestParseSize(t *testing.T) {
	good := map[string]int64{"512M": 512 << 20, "2G": 2 << 30, "2g": 2 << 30, "1048576": 1 << 20, "1024K": 1 << 20, "1T": 1 << 40}
	for v, want := range good {
		if n, err := ParseSize(v); err != nil || n != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", v, n, err, want)
		}
	}
	for _, v := range []string{"", "M", "1.5G", "-1G", "512MB", "512 M", "10", "1023K", "0", "9999999999T", "+5M", "5MM", "0x10M"} {
		if n, err := ParseSize(v); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", v, n)
		}
	}
}

func TestParsePoolRange(t *testing.T) {
	if lo, hi, err := ParseRange("2:16", 1024); err != nil || lo != 2 || hi != 16 {
		t.Fatalf("2:16 → %d %d %v", lo, hi, err)
	}
	for _, v := range []string{":4", "1:", "0:4", "4:2", "1:100000", "a:b", "1:2:3", "+1:4", " 1:4"} {
		if _, _, err := ParseRange(v, 1024); err == nil {
			t.Errorf("ParseRange(%q) succeeded", v)
		}
	}
}

// TestElasticHoldsAStepWhileTheBacklogDrains: a step is held while the queue
// more than halves from one step to the next, and taken, at the same size,
// once it drains slower.
func TestElasticHoldsAStepWhileTheBacklogDrains(t *testing.T) {
	e := NewElastic(1, 32, 10*time.Second)
	t0 := time.Unix(1e9, 0)
	at := func(d time.Duration, waiting, workers int) int {
		return e.Decide(Sample{Now: t0.Add(d), Waiting: waiting, Workers: workers, CPU: -1})
	}
	for d := time.Duration(0); d < 200*time.Millisecond; d += Tick {
		at(d, 10, 1)
	}
	steps := []struct {
		at      time.Duration
		waiting int
		workers int
		want    int
	}{
		{200 * time.Millisecond, 10, 1, 1},  // waited 200ms: +1
		{1200 * time.Millisecond, 40, 2, 2}, // still growing: +2
		{2200 * time.Millisecond, 15, 4, 0}, // more than halved: hold
		{3200 * time.Millisecond, 10, 4, 4}, // drains slower now: +4, the held size
		{4200 * time.Millisecond, 9, 8, 8},
	}
	for _, st := range steps {
		for d := st.at - 900*time.Millisecond; d < st.at; d += Tick {
			if d > 0 {
				if got := at(d, st.waiting, st.workers); got != 0 {
					t.Fatalf("at %v: %+d between steps", d, got)
				}
			}
		}
		if got := at(st.at, st.waiting, st.workers); got != st.want {
			t.Fatalf("at %v with %d waiting: %+d, want %+d", st.at, st.waiting, got, st.want)
		}
	}
}
