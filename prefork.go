//go:build linux || darwin

// This file holds the supervisor: its state, its run loop and its events.
//
// Who owns what. Every goroutine below owns only what its row names; the others
// reach it only the way the last column says. No other locks guard state.
//
//	goroutine              owns                                      others reach it by
//	supervisor (loop)      slots, workers, generations, the reload,  s.events: one typed event at a time
//	                       the stop, the status and its publication  (exitEvent, notifyEvent, ctlEvent, …)
//	spawner (spawn.go)     the one OS thread that forks workers      spawner.start: request, reply
//	reaper (spawn.go)      wait4 for every child                     it sends exitEvent, noChildrenEvent
//	timers (env.after)     nothing: each sends one event when due    the stop function env.after returns
//	notify readers         one worker's notify socket each           they send notifyEvent
//	rr dispatcher          accepts, handoffs in flight, windows      messages on its own queue, one wake per
//	(internal/rr)                                                    batch; snapshots by request and reply
//	Node readers           parsing one worker's cluster channel      nodeLinkEvent; the loop owns every Node
//	                                                                 worker's state (internal/nodecluster)
//	output relay           each worker's stdout and stderr pipes     nothing: a pair per worker, made and
//	(internal/output)      (a reader each), prefork's stdout and     started by the loop; they never wait
//	                       stderr (a writer each)                    for it, and it drops what cannot wait
//	pool (pool.go)         its samples of queues and memory          poolEvent to the loop; the loop's
//	                                                                 published view (s.pool)
//	control server         its clients' connections                  ctlEvent with a reply channel
//	metrics file writer    the file                                  ctlEvent{metrics}, like a client
//	listen watch           nothing: it rebinds a listener that a     (sock, at start)
//	                       worker shut down
//	listenwait watcher     the starting workers it looks at, their   Watch, Forget (messages); it sends
//	(internal/listenwait)  back-off                                  listenEvent when one is seen waiting
//
// What the loop decides about a slot is the slot table (slots.go); what it
// asks of the world outside (processes, signals, the clock, timers) goes
// through s.env, which tests replace.
package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prefork/prefork/internal/listenwait"
	"github.com/prefork/prefork/internal/nodecluster"
	"github.com/prefork/prefork/internal/output"
	"github.com/prefork/prefork/internal/rr"
	"github.com/prefork/prefork/internal/sock"
	"github.com/prefork/prefork/internal/upgrade"
)

// workerState is where a worker is in its life; the status file shows its name.
type workerState uint8

const (
	stateStarting workerState = iota // started, not up yet
	stateReady                       // up: it gets work
	stateStopping                    // leaving: no more work; SIGKILL at --grace
)

var workerStateNames = []string{"starting", "ready", "stopping"}

func (st workerState) String() string { return workerStateNames[st] }

// worker is one running process.
type worker struct {
	pid      int
	slot     *slot
	gen      int
	state    workerState
	started  time.Time
	wasReady bool
	retiring bool // stopped on purpose: its exit is not a crash
	lastPing time.Time
	failed   bool   // it quit young: its exit is a failed start
	why      string // a replacement: why it replaces the slot's worker
	status   string // last STATUS= it sent
	upBy     upBy   // how it came up
	seenIn   listenwait.Way
	unwatch  func() // stops watching whether it waits for connections (workers.go); nil when not watched
	notify   *notifySocket
	link     link        // its channel: see channel.go
	timer    func() bool // stops its timer: ready delay or ready timeout, then the grace period
}

// slot is one of the N places a worker runs in; PREFORK_WORKER is its index.
type slot struct {
	index    int
	cur      *worker // the worker serving this slot
	next     *worker // its replacement, until it is up (slots.go)
	failures int     // failed starts in a row
	restarts int
	lastExit int
	replaced string // why its worker was last replaced
	socks    []int  // reuseport mode: this slot's own sockets, kept across restarts
	removed  bool   // scaled down: its sockets close once its workers are gone

	restartDue time.Time // empty after a failed start: when its restart is due
}

// event is what the owner goroutine receives on s.events; every kind is listed
// here (the reaper's, the pool's and the control socket's are declared next to
// their senders).
type event interface{ isEvent() }

func (exitEvent) isEvent()         {}
func (noChildrenEvent) isEvent()   {}
func (readyDelayEvent) isEvent()   {}
func (readyTimeoutEvent) isEvent() {}
func (graceEvent) isEvent()        {}
func (restartEvent) isEvent()      {}
func (notifyEvent) isEvent()       {}
func (brokenEvent) isEvent()       {}
func (drainDoneEvent) isEvent()    {}
func (sweepDoneEvent) isEvent()    {}
func (poolEvent) isEvent()         {}
func (ctlEvent) isEvent()          {}
func (nodeLinkEvent) isEvent()     {}
func (upgradeCheckEvent) isEvent() {}
func (nodeStopEvent) isEvent()     {}
func (listenEvent) isEvent()       {}

// The supervisor's own events: its timers, notify sockets and channels.
type (
	readyDelayEvent   struct{ w *worker }
	readyTimeoutEvent struct{ w *worker }
	graceEvent        struct{ w *worker }
	restartEvent      struct{ sl *slot }
	notifyEvent       struct {
		w   *worker
		msg map[string]string
	}
	brokenEvent struct {
		pid int
		err error
	}
	drainDoneEvent struct{}
	sweepDoneEvent struct{}
)

type supervisor struct {
	c         *config
	log       *slog.Logger
	policy    restartPolicy
	path      string   // the command, resolved in wd at start or at the last reload
	argv      []string // its argv
	wd        workdir  // where workers start (command.go)
	shim      string   // prefork's own binary
	cred      string   // --user, for the shim
	listeners []*sock.Listener
	baseEnv   []string
	events    chan event
	env       env // the world outside: processes, signals, clock, timers (spawn.go)
	spawner   spawner
	reaper    *reaper
	notify    *notifyDir
	up        *upstream
	rr        *rr.Dispatcher
	ch        workerChannel
	pool      *poolHandle          // the pool goroutine's view and readings (pool.go); nil when not needed
	ctl       ctlState             // the control socket's waiting clients (control.go)
	nc        *nodecluster.Cluster // --node-cluster: the listeners Node workers share (node.go)
	sigs      chan os.Signal       // the signals the loop handles
	self      upgrade.Self         // the binary an upgrade checks and executes (reload.go)
	upg       *upgradeRun          // the upgrade under way; nil when none
	adopt     *adoption            // the state this image took over from the last; nil when none
	lw        *listenwait.Watcher  // --ready auto|listen: looks whether starting workers wait for connections (workers.go)
	seeing    seeing               // what --ready auto and listen learned about seeing workers (workers.go)
	out       *output.Relay        // --worker-output prefix or json: the workers' lines; nil for inherit
	retired   []*slot              // reuseport mode: removed slots whose sockets are still open, by index (slots.go)

	workers       map[int]*worker
	slots         []*slot
	gen           int
	reloadGen     int // the generation a rolling reload brings in; 0 when none runs
	stopping      bool
	sweeping      bool
	upOnce        bool
	done          bool
	exitCode      int
	lastState     string    // what the status file last said
	lastStatus    string    // the STATUS= line last sent upward
	statusFailing bool      // the status file could not be written last time
	published     time.Time // when publish last ran (status.go)
}

// supervise binds, starts the workers and runs until a stop; it returns the
// exit status. After an upgrade's exec it takes over the state of the image
// before instead (adopt), and a failure before its loop runs hands the state
// back to that image (startup.go).
func supervise(c *config, stderr io.Writer, adopt *adoption) int {
	sigs := takeSignals()
	defer releaseSignals(sigs)
	log := newLogger(stderr, c.logFormat, c.verbosity)
	fail := func(code int, format string, a ...any) int {
		adopt.handBack(log, fmt.Sprintf(format, a...)) // returns only when it cannot
		if code == exitUsage {                         // a usage error found only now: a listener's address
			log.Error(fmt.Sprintf(format, a...), "hint", "run 'prefork --help' for usage")
		} else {
			log.Error(fmt.Sprintf(format, a...))
		}
		return code
	}
	setCloseOnExecAll() // nothing prefork inherited may leak into a worker
	s := &supervisor{c: c, log: log, policy: newRestartPolicy(c), up: takeUpstream(),
		workers: map[int]*worker{}, events: make(chan event, 1024), gen: 1, sigs: sigs, adopt: adopt}
	var err error
	if s.shim, err = selfExe(); err != nil {
		return fail(exitFailure, "cannot find prefork's own binary: %v", err)
	}
	exe := "" // the path of the first start: os.Executable now, or as the state has it
	if st := adopt.state(); st != nil {
		exe = st.Exe
	}
	s.self = upgrade.OpenSelfAt(exe)
	defer s.self.Close()
	uid, gid := -1, -1
	if adopt != nil {
		uid, gid = s.inherit() // the command, --user, the workers, the listeners (startup.go)
	} else if code, err := s.prepare(&uid, &gid); err != nil {
		return fail(code, "%v", err)
	}
	defer sock.Close(s.listeners...)
	for _, l := range s.listeners {
		if uid >= 0 && l.Spec.Network == "unix" && adopt == nil {
			os.Chown(l.Spec.Addr, uid, gid)
		}
		log.Info("listening", "name", l.Spec.Name, "addr", l.Bound())
	}
	defer sock.Watch(s.listeners, c.backlog, log)() // stopped before the listeners close
	if warn, err := checkDescriptors(c, len(s.listeners)); err != nil && adopt == nil {
		fail(exitFailure, "%v", err)
		log.Info(err.(*fdLimitError).hint())
		return exitFailure
	} else if warn != "" && adopt == nil {
		log.Warn(warn)
	}
	if adopt != nil {
		s.notify = adopt.notifyDir()
	} else if s.notify, err = newNotifyDir(uid, gid); err != nil {
		return fail(exitFailure, "%v", err)
	}
	defer s.notify.remove()
	s.notify.log = log
	if c.mode == modeRR {
		fds := make([]int, len(s.listeners))
		for i, l := range s.listeners {
			fds[i] = l.FD
		}
		s.rr, err = newDispatcher(fds, c.rrWindow, log, func(pid int, err error) { s.events <- brokenEvent{pid, err} },
			rrBalancer(c.balance), c.readyTimeout)
		if err != nil {
			return fail(exitFailure, "rr dispatcher: %v", err)
		}
		defer s.rr.Close()
	}
	if nodeClusterOn(c, s.path) {
		s.nc = newNodeCluster(c, log, s.listeners, s.rr)
		defer s.nc.Close()
	}
	s.ch = s.newChannel()
	if c.workerOutput != output.Inherit {
		s.out = output.New(c.workerOutput, os.Stdout, os.Stderr, log)
		defer s.out.Close(time.Second) // after the loop: every worker is gone
	}
	if c.pidfile != "" {
		if err := os.WriteFile(c.pidfile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			return fail(exitFailure, "pidfile: %v", err)
		}
		defer os.Remove(c.pidfile)
	}
	if c.statusFile != "" {
		defer os.Remove(c.statusFile)
	}
	if err := s.openControl(); err != nil {
		return fail(exitFailure, "%v", err)
	}
	defer s.closeControl()
	if err := setSubreaper(); err != nil {
		log.Debug("cannot become child subreaper", "err", err)
	}
	s.baseEnv = cleanEnv(os.Environ())
	s.spawner = newSpawner()
	if s.watchesListen() {
		s.lw = listenwait.New(s.events, func(r listenwait.Report) event { return listenEvent{r} })
		defer s.lw.Close()
	}
	s.env = s.realEnv()
	s.reaper = startReaper(s.events)
	if adopt == nil && stopBeforeStart(sigs) {
		log.Info("stopped during start-up; no worker was started")
		return exitOK
	}
	return s.loop(sigs)
}

// cleanEnv drops what prefork sets itself, and what was meant for prefork only.
func cleanEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "LISTEN_"), strings.HasPrefix(k, "PREFORK_"),
			k == "NODE_CHANNEL_FD", k == "NODE_UNIQUE_ID", k == "NODE_CHANNEL_SERIALIZATION_MODE", // a Node parent's channel
			k == "NOTIFY_SOCKET", k == "WATCHDOG_USEC", k == "WATCHDOG_PID", k == "SERVER_STARTER_PORT":
			continue
		}
		out = append(out, kv)
	}
	return out
}

func (s *supervisor) loop(sigs chan os.Signal) int {
	var watchdog <-chan time.Time
	if s.c.watchdog > 0 {
		t := time.NewTicker(max(s.c.watchdog/4, 5*time.Millisecond))
		defer t.Stop()
		watchdog = t.C
	}
	var upPing <-chan time.Time
	if d := upstreamWatchdog(); d > 0 && s.up != nil {
		t := time.NewTicker(d / 2)
		defer t.Stop()
		upPing = t.C
	}
	if s.adopt != nil {
		s.adoptWorkers() // the workers of the image before (workers.go)
	} else if !s.startSlots() {
		return exitFailure
	}
	s.startPool()
	defer s.stopPool()
	for !s.done {
		// A burst of events (a thousand workers coming up) is published once
		// it has been handled, not after each event: the snapshot is O(workers).
		if len(s.events) == 0 || time.Since(s.published) >= 100*time.Millisecond {
			s.published = time.Now()
			s.publish()
		}
		s.publishPool()
		s.ctlCheck()
		select {
		case sig := <-sigs:
			s.signal(sig.(syscall.Signal))
		case ev := <-s.events:
			s.handle(ev)
		case <-watchdog:
			s.checkWatchdogs()
		case <-upPing:
			s.up.send("WATCHDOG=1")
		}
	}
	s.log.Info("stopped")
	return s.exitCode
}

// startSlots starts the workers, all or none.
func (s *supervisor) startSlots() bool {
	s.log.Info("starting workers", "workers", s.c.workers, "mode", s.c.mode, "command", strings.Join(s.argv, " "))
	for i := 0; i < s.c.workers; i++ {
		if _, err := s.addSlot(); err != nil {
			s.log.Error(fmt.Sprintf("cannot start %d workers: slot %d: %v", s.c.workers, i, err))
			if isFdLimit(err) {
				s.log.Info("hint: raise the descriptor limit (ulimit -n) or run fewer workers (-n)")
			}
			for _, sl := range s.slots {
				if sl.index > 0 {
					closeFds(sl.socks)
				}
			}
			return false
		}
	}
	for _, sl := range s.slots {
		s.startIn(sl)
	}
	return true
}

func (s *supervisor) handle(ev event) {
	switch e := ev.(type) {
	case exitEvent:
		if w := s.workers[e.pid]; w != nil {
			s.exited(w, e.status)
		} else {
			s.log.Debug("reaped orphan", "pid", e.pid, "status", e.status)
		}
	case noChildrenEvent:
		if s.sweeping {
			s.done = true
		}
	case sweepDoneEvent:
		if os.Getpid() == 1 {
			syscall.Kill(-1, syscall.SIGKILL)
		}
		// Descendants that escaped their worker's process group (setsid) and
		// outlived the grace period would keep the listeners open after
		// prefork: the next prefork could not bind. Killed, as systemd kills
		// what is left of a unit's cgroup.
		pids := ownChildren()
		for _, pid := range pids {
			syscall.Kill(-pid, syscall.SIGKILL)
			syscall.Kill(pid, syscall.SIGKILL)
		}
		s.log.Warn("descendants of workers still ran after the grace period; killed them", "pids", fmt.Sprint(pids))
		s.done = true
	case readyDelayEvent:
		if s.alive(e.w) && e.w.state == stateStarting {
			s.step(slotInput{sl: e.w.slot, w: e.w, ev: evReadyDelay})
		}
	case readyTimeoutEvent:
		if s.alive(e.w) && e.w.state == stateStarting {
			s.step(slotInput{sl: e.w.slot, w: e.w, ev: evReadyTimeout, why: fmt.Sprintf("not ready within %v", s.c.readyTimeout)})
		}
	case graceEvent:
		if s.alive(e.w) {
			s.log.Warn("worker still running after the grace period; killing it", "slot", e.w.slot.index, "pid", e.w.pid, "grace", s.c.grace)
			s.env.kill(-e.w.pid, syscall.SIGKILL)
		}
	case restartEvent:
		if !s.stopping && !e.sl.removed && e.sl.cur == nil && e.sl.next == nil {
			s.startIn(e.sl)
		}
	case notifyEvent:
		if s.alive(e.w) {
			s.notified(e.w, e.msg)
		}
	case brokenEvent:
		if w := s.workers[e.pid]; w != nil && !w.retiring && w.state != stateStopping {
			s.log.Error("worker channel broken; stopping it", "slot", w.slot.index, "pid", w.pid, "err", e.err)
			s.step(slotInput{sl: w.slot, w: w, ev: evBroken, why: whyBroken})
		}
	case drainDoneEvent:
		s.stopAll()
	case poolEvent:
		s.handlePool(e)
	case ctlEvent:
		s.controlRequest(e)
	case nodeLinkEvent:
		if s.alive(e.w) {
			e.l.event(e.w, e.e)
		}
	case upgradeCheckEvent:
		s.upgradeChecked(e)
	case nodeStopEvent:
		if s.alive(e.w) {
			e.l.stopWaited()
		}
	case listenEvent:
		s.seen(e.Report)
	}
}

func (s *supervisor) alive(w *worker) bool { return s.workers[w.pid] == w }

// kill signals a worker's whole process group.
func kill(pid int, sig syscall.Signal) { syscall.Kill(-pid, sig) }

// stop sends a worker its stop signal: to its process group, or with
// --kill-mode mixed to the worker's own process only, so that a master such
// as Starman or uWSGI stops its children gracefully itself, as they do under
// Server::Starter (SIGKILL after --grace still goes to the group).
func (k killMode) stop(pid int, sig syscall.Signal) {
	if k == killMixed {
		syscall.Kill(pid, sig)
		return
	}
	kill(pid, sig)
}

func (s *supervisor) signal(sig syscall.Signal) {
	s.log.Debug("signal", "signal", sig.String())
	switch sig {
	case syscall.SIGTERM, syscall.SIGINT:
		if s.stopping {
			s.log.Warn("second stop signal: killing every worker now")
			s.killAll()
			return
		}
		s.beginStop(s.c.drainDelay)
	case syscall.SIGQUIT:
		s.stopping = true
		s.killAll()
		s.checkDone()
	case syscall.SIGHUP:
		if !s.stopping {
			s.gen++
			s.reloadGen = s.gen
			s.up.send("RELOADING=1\nMONOTONIC_USEC=" + monotonicUsec())
			s.log.Info("rolling reload", "generation", s.gen)
			if _, err := s.resolve(); err != nil { // a deploy may have swapped the directory (command.go)
				s.log.Error("reload abandoned; the old workers keep serving", "err", err)
				s.reloadFinished(err)
				return
			}
			s.advanceReload()
		}
	case syscall.SIGTTIN:
		if _, hi := s.slotBounds(); !s.stopping && len(s.slots) < hi {
			if err := s.scaleTo(len(s.slots) + 1); err != nil {
				s.log.Error("cannot add a worker", "err", err)
			}
		} else if !s.stopping {
			s.log.Info("already at the most workers", "workers", hi)
		}
	case syscall.SIGTTOU:
		if lo, _ := s.slotBounds(); !s.stopping && len(s.slots) > lo {
			s.scaleTo(len(s.slots) - 1)
		} else if !s.stopping {
			s.log.Info("already at the fewest workers", "workers", lo)
		}
	default: // USR1, USR2, WINCH
		for _, w := range s.workers {
			kill(w.pid, sig)
		}
	}
}
