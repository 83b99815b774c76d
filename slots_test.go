//go:build linux || darwin

// This file tests the slot transitions of slots.go with real processes: workers
// that quit at once, rr workers that give up their channel, workers that never
// come up.
package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prefork/prefork/internal/listenwait"
)

const markerEnv = "TESTWORKER_MARKER"

func init() {
	extraRoles["storm"] = stormWorker
	extraRoles["rrclose"] = rrCloseWorker
	extraRoles["termlog"] = termLogWorker
}

// stormWorker says READY=1 and STOPPING=1 at once, then lingers, deaf to TERM.
func stormWorker() int {
	signal.Ignore(syscall.SIGTERM)
	sdNotify("READY=1")
	sdNotify("STOPPING=1")
	time.Sleep(time.Minute)
	return 1
}

// rrCloseWorker, the first time (no marker file yet), closes its rr handoff
// channel and keeps running; after that it is an ordinary HTTP worker.
func rrCloseWorker() int {
	m := os.Getenv(markerEnv)
	if _, err := os.Stat(m); err != nil {
		os.WriteFile(m, []byte(strconv.Itoa(os.Getpid())), 0o644)
		time.Sleep(300 * time.Millisecond)
		syscall.Close(3)
		time.Sleep(time.Minute)
		return 0
	}
	return testWorker("http")
}

// termLogWorker never says READY=1; on TERM it leaves a mark and exits 0.
func termLogWorker() int {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	<-sigs
	os.WriteFile(filepath.Join(os.Getenv(markerEnv), "term."+strconv.Itoa(os.Getpid())), nil, 0o644)
	return 0
}

func TestStoppingStormIsBounded(t *testing.T) {
	// Workers that say READY=1 then STOPPING=1 and linger once made prefork
	// with -n 2 run 83 workers in 4 s. Only one replacement per slot may be on
	// its way, and a replacement that quits young is a failed start.
	in := startPrefork(t, "storm", nil, "-l", "127.0.0.1:0", "-n", "2", "--ready", "notify",
		"--grace", "1s", "--backoff-min", "200ms", "--backoff-max", "1s", "--max-restarts", "0")
	time.Sleep(4 * time.Second)
	started := strings.Count(in.stderr.String(), "worker started")
	t.Logf("%d workers started in 4 s with -n 2", started)
	if started > 10 {
		t.Errorf("%d workers started in 4 s with -n 2: a STOPPING=1 storm", started)
	}
	if started < 3 {
		t.Errorf("%d workers started: the first STOPPING=1 should have started a replacement", started)
	}
	if !strings.Contains(in.stderr.String(), "counting a failed start") {
		t.Error("no replacement that quit young was counted as a failed start")
	}
}

func TestRRWorkerThatClosesItsChannelIsReplaced(t *testing.T) {
	// With -n 1, a worker that closes its handoff channel but keeps running
	// used to leave the service answering nothing, forever, while "ready".
	marker := filepath.Join(t.TempDir(), "closed")
	in := startPrefork(t, "rrclose", []string{markerEnv + "=" + marker}, "-l", "127.0.0.1:0", "-n", "1",
		"--mode", "rr", "--ready", "delay", "--ready-delay", "100ms", "--grace", "2s")
	addr := in.addr()
	deadline := time.Now().Add(15 * time.Second)
	var rep workerReport
	var err error
	for time.Now().Before(deadline) {
		if rep, err = get(addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("the service never answered after its only worker closed its channel: %v", err)
	}
	b, _ := os.ReadFile(marker)
	first, _ := strconv.Atoi(string(b))
	if first == 0 || rep.PID == first {
		t.Fatalf("answered by %d, want the replacement of %d", rep.PID, first)
	}
	in.waitFor("the broken worker gone", 10*time.Second, func(st statusFile) bool {
		return len(st.Workers) == 1 && !pidAlive(first)
	})
	if out := in.stderr.String(); !strings.Contains(out, "closed its handoff channel") {
		t.Errorf("the log does not say the worker closed its handoff channel:\n%s", out)
	}
}

func TestReadyTimeoutStopsGracefully(t *testing.T) {
	// A worker not up by --ready-timeout gets --stop-signal first, as systemd
	// stops a unit that missed its start timeout, not SIGKILL at once.
	marks := t.TempDir()
	in := startPrefork(t, "termlog", []string{markerEnv + "=" + marks}, "-l", "127.0.0.1:0", "-n", "1",
		"--ready", "notify", "--ready-timeout", "2s", "--grace", "20s", // 2s: time to install its TERM handler under -race
		"--backoff-min", "20ms", "--backoff-max", "40ms", "--max-restarts", "2")
	if code := in.wait(15 * time.Second); code != 1 {
		t.Fatalf("exit status %d, want 1 after workers that never came up", code)
	}
	terms, _ := filepath.Glob(filepath.Join(marks, "term.*"))
	if len(terms) != 2 {
		t.Errorf("%d workers got TERM, want both", len(terms))
	}
	if out := in.stderr.String(); !strings.Contains(out, "last exit status 0") {
		t.Errorf("the worker was not stopped gracefully:\n%s", out)
	}
}

// The slot table, driven event by event through a fake world: no process, no
// sleep. fakeWorld is the supervisor's env: pids from 101, a clock that moves
// only when told, timers that fire when it passes them, and every start, stop
// signal, kill and timer written down in order.
type fakeWorld struct {
	now    time.Time
	pid    int
	did    []string
	timers []*fakeTimer
}

type fakeTimer struct {
	at      time.Time
	ev      event
	stopped bool
}

// fakeLink is a worker's channel: stopping it is written down; says makes it
// a worker that reports being up itself (a Node worker).
type fakeLink struct {
	f    *fakeWorld
	pid  int
	says bool
}

func (l *fakeLink) attach(w *worker)        { l.pid = w.pid }
func (l *fakeLink) abort()                  {}
func (l *fakeLink) ready()                  {}
func (l *fakeLink) saysReady() bool         { return l.says }
func (l *fakeLink) drain()                  {}
func (l *fakeLink) stop(sig syscall.Signal) { l.f.note("stop %d %s", l.pid, sigName(sig)) }
func (l *fakeLink) detach()                 {}

func sigName(sig syscall.Signal) string {
	for name, s := range signalNames {
		if s == sig {
			return name
		}
	}
	return sig.String()
}

func (f *fakeWorld) note(format string, a ...any) { f.did = append(f.did, fmt.Sprintf(format, a...)) }

func (f *fakeWorld) env() env {
	return env{
		start: func(sl *slot) (proc, error) {
			f.pid++
			f.note("start %d: %d", sl.index, f.pid)
			return proc{pid: f.pid, link: &fakeLink{f: f}}, nil
		},
		kill: func(pid int, sig syscall.Signal) { f.note("kill %d %s", pid, sigName(sig)) },
		now:  func() time.Time { return f.now },
		after: func(d time.Duration, ev event) func() bool {
			t := &fakeTimer{at: f.now.Add(d), ev: ev}
			f.timers = append(f.timers, t)
			f.note("timer %v %s", d, timerName(ev))
			return func() bool { was := !t.stopped; t.stopped = true; return was }
		},
	}
}

// watch is env.watch: the start and the end of a watch are written down.
func (f *fakeWorld) watch(pid int, socks []listenwait.Sock) func() {
	f.note("watch %d", pid)
	return func() { f.note("unwatch %d", pid) }
}

func timerName(ev event) string {
	switch e := ev.(type) {
	case readyDelayEvent:
		return fmt.Sprintf("ready-delay %d", e.w.pid)
	case readyTimeoutEvent:
		return fmt.Sprintf("ready-timeout %d", e.w.pid)
	case graceEvent:
		return fmt.Sprintf("grace %d", e.w.pid)
	case restartEvent:
		return fmt.Sprintf("restart %d", e.sl.index)
	}
	return fmt.Sprintf("%T", ev)
}

// advance moves the clock by d and hands each timer that falls due to the
// owner, earliest first.
func (f *fakeWorld) advance(s *supervisor, d time.Duration) {
	end := f.now.Add(d)
	for {
		var next *fakeTimer
		for _, t := range f.timers {
			if !t.stopped && !t.at.After(end) && (next == nil || t.at.Before(next.at)) {
				next = t
			}
		}
		if next == nil {
			break
		}
		next.stopped, f.now = true, next.at
		s.handle(next.ev)
	}
	f.now = end
}

func fakeSupervisor() (*supervisor, *fakeWorld) {
	c := defaultConfig()
	c.workers = 1
	f := &fakeWorld{now: time.Unix(1_000_000, 0), pid: 100}
	s := &supervisor{c: c, log: slog.New(slog.NewTextHandler(io.Discard, nil)), policy: newRestartPolicy(c),
		workers: map[int]*worker{}, events: make(chan event, 16), gen: 1, env: f.env(),
		reaper: &reaper{kick: make(chan struct{}, 1)}}
	s.policy.jitter = func() float64 { return 0 }
	return s, f
}

// scene builds, through the table itself, a slot in a row's starting state:
// empty; running with cur 101 (up or starting); replacing with next 102 too.
func scene(s *supervisor, f *fakeWorld, st slotState, curUp bool) *slot {
	sl, _ := s.addSlot()
	if st != slotEmpty {
		s.startIn(sl)
		if curUp {
			s.markReady(sl.cur, upNotify)
		}
		if st == slotReplacing {
			s.replace(sl, "test")
		}
	}
	return sl
}

type slotCase struct {
	from   slotState
	curUp  bool
	notify bool                                        // under --ready notify
	seeing bool                                        // the world can see whether workers wait (fakeWorld.watch)
	setup  func(s *supervisor, f *fakeWorld, sl *slot) // before the event, not written down
	fire   func(s *supervisor, f *fakeWorld, sl *slot)
	want   []string // what the world saw, in order
	check  func(sl *slot) string
}

func sendNotify(msg string) func(s *supervisor, f *fakeWorld, sl *slot) {
	return func(s *supervisor, f *fakeWorld, sl *slot) {
		k, v, _ := strings.Cut(msg, "=")
		pid, _ := strconv.Atoi(v)
		s.notified(s.workers[pid], map[string]string{k: "1"})
	}
}

func send(ev func(sl *slot) event) func(s *supervisor, f *fakeWorld, sl *slot) {
	return func(s *supervisor, f *fakeWorld, sl *slot) { s.handle(ev(sl)) }
}

func passes(d time.Duration) func(s *supervisor, f *fakeWorld, sl *slot) {
	return func(s *supervisor, f *fakeWorld, sl *slot) { f.advance(s, d) }
}

func says(s *supervisor, f *fakeWorld, sl *slot) { sl.cur.link.(*fakeLink).says = true }

func curIs(pid int, st workerState) func(sl *slot) string {
	return func(sl *slot) string {
		if sl.cur == nil || sl.cur.pid != pid || sl.cur.state != st {
			return fmt.Sprintf("cur is %+v, want pid %d %s", sl.cur, pid, st)
		}
		return ""
	}
}

var slotCases = map[string]slotCase{
	"empty slot restart due": {from: slotEmpty, fire: send(func(sl *slot) event { return restartEvent{sl} }),
		want: []string{"start 0: 101", "timer 1s ready-delay 101"}},
	"running slot replace": {from: slotRunning, curUp: true,
		fire: func(s *supervisor, f *fakeWorld, sl *slot) { s.replace(sl, "test") },
		want: []string{"start 0: 102", "timer 1s ready-delay 102"}},
	"replacing slot replace": {from: slotReplacing, curUp: true,
		fire: func(s *supervisor, f *fakeWorld, sl *slot) { s.replace(sl, "test") }},
	"any slot removed": {from: slotReplacing, curUp: true,
		fire: func(s *supervisor, f *fakeWorld, sl *slot) {
			s.slots = append([]*slot{{index: 1}}, s.slots...) // removeSlot keeps one slot
			s.removeSlot()
		},
		want:  []string{"timer 30s grace 101", "stop 101 TERM", "timer 30s grace 102", "stop 102 TERM"},
		check: func(sl *slot) string { return map[bool]string{false: "not removed"}[sl.removed] }},
	"running,replacing cur ready": {from: slotRunning,
		fire: func(s *supervisor, f *fakeWorld, sl *slot) { s.markReady(sl.cur, upNotify) }, check: curIs(101, stateReady)},
	"replacing next ready": {from: slotReplacing, curUp: true,
		fire: func(s *supervisor, f *fakeWorld, sl *slot) { s.markReady(sl.next, upNotify) },
		want: []string{"timer 30s grace 101", "stop 101 TERM"}, check: curIs(102, stateReady)},
	"running,replacing cur,next ready delay passed says it": {from: slotRunning, setup: says, fire: passes(time.Second),
		want: []string{"timer 59s ready-timeout 101"}, check: curIs(101, stateStarting)},
	"running,replacing cur ready delay passed": {from: slotRunning, fire: passes(time.Second), check: curIs(101, stateReady)},
	"replacing next ready delay passed": {from: slotReplacing, curUp: true, fire: passes(time.Second),
		want: []string{"timer 30s grace 101", "stop 101 TERM"}, check: curIs(102, stateReady)},
	"running,replacing cur ready timeout Node, delay": {from: slotRunning, setup: says, fire: passes(time.Minute),
		want: []string{"timer 59s ready-timeout 101"}, check: curIs(101, stateReady)},
	"running,replacing cur ready timeout auto, unseen": {from: slotRunning, seeing: true, fire: passes(time.Minute),
		want: []string{"unwatch 101"}, check: func(sl *slot) string {
			if sl.cur.upBy != upDelay || sl.cur.state != stateReady {
				return fmt.Sprintf("cur %s, up by %q; want ready by the delay rule", sl.cur.state, sl.cur.upBy)
			}
			return ""
		}},
	"replacing next ready timeout auto, unseen": {from: slotReplacing, curUp: true, seeing: true, fire: passes(time.Minute),
		want: []string{"unwatch 102", "timer 30s grace 101", "stop 101 TERM"}, check: curIs(102, stateReady)},
	"replacing next ready timeout": {from: slotReplacing, curUp: true, notify: true, fire: passes(time.Minute),
		want: []string{"timer 30s grace 102", "stop 102 TERM"}, check: curIs(101, stateReady)},
	"running,replacing cur ready timeout": {from: slotRunning, notify: true, fire: passes(time.Minute),
		want:  []string{"timer 30s grace 101", "stop 101 TERM"},
		check: func(sl *slot) string { return map[bool]string{false: "not a failed start"}[sl.cur.failed] }},
	"replacing next STOPPING=1": {from: slotReplacing, curUp: true, fire: sendNotify("STOPPING=102"),
		want: []string{"timer 30s grace 102"}, check: curIs(101, stateReady)},
	"running,replacing cur STOPPING=1 young": {from: slotRunning, fire: sendNotify("STOPPING=101"),
		want: []string{"timer 30s grace 101"}, check: curIs(101, stateStopping)},
	"running cur STOPPING=1": {from: slotRunning, curUp: true, fire: sendNotify("STOPPING=101"),
		want: []string{"timer 30s grace 101", "start 0: 102", "timer 1s ready-delay 102"}},
	"any cur,old STOPPING=1": {from: slotReplacing, curUp: true, fire: sendNotify("STOPPING=101"),
		want: []string{"timer 30s grace 101"}, check: curIs(101, stateStopping)},
	"replacing next channel broken": {from: slotReplacing, curUp: true,
		fire: send(func(sl *slot) event { return brokenEvent{102, syscall.EPIPE} }),
		want: []string{"timer 30s grace 102", "stop 102 TERM"}, check: curIs(101, stateReady)},
	"running,replacing cur channel broken young": {from: slotRunning,
		fire: send(func(sl *slot) event { return brokenEvent{101, syscall.EPIPE} }),
		want: []string{"timer 30s grace 101", "stop 101 TERM"}, check: curIs(101, stateStopping)},
	"running cur channel broken": {from: slotRunning, curUp: true,
		fire: send(func(sl *slot) event { return brokenEvent{101, syscall.EPIPE} }),
		want: []string{"timer 30s grace 101", "stop 101 TERM", "start 0: 102", "timer 1s ready-delay 102"}},
	"any cur,old channel broken": {from: slotReplacing, curUp: true,
		fire: send(func(sl *slot) event { return brokenEvent{101, syscall.EPIPE} }),
		want: []string{"timer 30s grace 101", "stop 101 TERM"}, check: curIs(101, stateStopping)},
	"running cur missed watchdog": {from: slotRunning, curUp: true,
		fire: func(s *supervisor, f *fakeWorld, sl *slot) { f.now = f.now.Add(2 * time.Second); s.checkWatchdogs() },
		want: []string{"start 0: 102", "timer 1s ready-delay 102", "timer 30s grace 101", "kill 101 ABRT"}},
	"any cur,old missed watchdog": {from: slotReplacing, curUp: true,
		fire: func(s *supervisor, f *fakeWorld, sl *slot) { f.now = f.now.Add(2 * time.Second); s.checkWatchdogs() },
		want: []string{"timer 30s grace 101", "kill 101 ABRT"}, check: curIs(101, stateStopping)},
	"replacing next exits": {from: slotReplacing, curUp: true,
		fire: send(func(sl *slot) event { return exitEvent{102, 1} }),
		want: []string{"kill -102 KILL"}, check: curIs(101, stateReady)},
	"running,replacing cur exits retired": {from: slotRunning, curUp: true,
		setup: func(s *supervisor, f *fakeWorld, sl *slot) { s.stopWorker(sl.cur) },
		fire:  send(func(sl *slot) event { return exitEvent{101, 0} }),
		want:  []string{"kill -101 KILL", "start 0: 102", "timer 1s ready-delay 102"}, check: curIs(102, stateStarting)},
	"running cur exits failed start": {from: slotRunning,
		fire:  send(func(sl *slot) event { return exitEvent{101, 1} }),
		want:  []string{"kill -101 KILL", "timer 100ms restart 0"},
		check: func(sl *slot) string { return map[bool]string{false: "failures not counted"}[sl.failures == 1] }},
	"replacing cur exits failed start": {from: slotReplacing,
		fire: send(func(sl *slot) event { return exitEvent{101, 1} }),
		want: []string{"kill -101 KILL"}, check: curIs(102, stateStarting)},
	"running,replacing cur exits": {from: slotRunning, curUp: true,
		fire: func(s *supervisor, f *fakeWorld, sl *slot) {
			f.now = f.now.Add(2 * time.Second)
			s.handle(exitEvent{101, 1})
		},
		want: []string{"kill -101 KILL", "start 0: 102", "timer 1s ready-delay 102"}, check: curIs(102, stateStarting)},
}

// TestSlotTransitions takes each row of the slot table once: it builds the
// row's starting state, sends the event through the owner's handlers, and
// checks what the world saw and the state the slot ends in.
func TestSlotTransitions(t *testing.T) {
	for _, r := range slotTable {
		name := r.key()
		tc, ok := slotCases[name]
		if !ok {
			t.Errorf("row %q has no case in slotCases", name)
			continue
		}
		t.Run(name, func(t *testing.T) {
			s, f := fakeSupervisor()
			s.c.watchdog = time.Second
			if tc.notify {
				s.c.ready = readyOnNotify
			}
			if tc.seeing {
				s.env.watch = f.watch
			}
			sl := scene(s, f, tc.from, tc.curUp)
			if tc.setup != nil {
				tc.setup(s, f, sl)
			}
			f.did = nil
			tc.fire(s, f, sl)
			if !slices.Equal(f.did, tc.want) {
				t.Errorf("the world saw\n\t%q\nwant\n\t%q", f.did, tc.want)
			}
			want := r.to
			if want == same {
				want = tc.from
			}
			if got := sl.state(); got != want {
				t.Errorf("slot is %s, want %s", got, want)
			}
			if tc.check != nil {
				if msg := tc.check(sl); msg != "" {
					t.Error(msg)
				}
			}
		})
	}
	if len(slotCases) != len(slotTable) {
		t.Errorf("%d cases for %d rows", len(slotCases), len(slotTable))
	}
}

// TestSlotTableDoc checks that the table in slots.go's header is slotTable.
func TestSlotTableDoc(t *testing.T) {
	src, err := os.ReadFile("slots.go")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, line := range strings.Split(string(src), "\n") {
		if strings.HasPrefix(line, "//\t") {
			got = append(got, line)
		} else if len(got) > 0 {
			break
		}
	}
	want := strings.Split(renderSlotTable(), "\n")
	if !slices.Equal(got, want) {
		t.Errorf("slots.go's table is not slotTable; write this instead:\n%s", strings.Join(want, "\n"))
	}
}

func renderSlotTable() string {
	var b strings.Builder
	fmt.Fprintf(&b, "//\t%-18s %-9s %-20s %-13s %s", "state", "whose", "event", "when", "action → state")
	for _, r := range slotTable {
		to := "(same)"
		if r.to != same {
			to = r.to.String()
		}
		fmt.Fprintf(&b, "\n//\t%-18s %-9s %-20s %-13s %s → %s", r.from, r.who, slotEventNames[r.on], condNames[r.when], r.do, to)
	}
	return b.String()
}

var (
	slotEventNames = []string{"restart due", "replace", "removed", "ready", "ready delay passed", "ready timeout",
		"STOPPING=1", "channel broken", "missed watchdog", "exits"}
	condNames = []string{"", "says it", "Node, delay", "auto, unseen", "young", "retired", "failed start"}
)

func (st slotState) String() string {
	if st == slotAny {
		return "any"
	}
	return bitNames(uint8(st), "empty", "running", "replacing")
}

func (w whose) String() string { return bitNames(uint8(w), "slot", "cur", "next", "old") }

func bitNames(bits uint8, names ...string) string {
	var out []string
	for i, n := range names {
		if bits&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return strings.Join(out, ",")
}

// key names a row for slotCases.
func (r transition) key() string {
	return strings.TrimSpace(fmt.Sprintf("%s %s %s %s", r.from, r.who, slotEventNames[r.on], condNames[r.when]))
}
