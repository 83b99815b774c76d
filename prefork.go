//go:build unix

// This file holds the supervisor. One goroutine (loop) owns every piece of state:
// workers, slots, timers, generations. Signals, the reaper, notify sockets, timers
// and the rr dispatcher only send it events over one channel.
package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Worker states, as the status file shows them.
const (
	stateStarting = "starting"
	stateReady    = "ready"
	stateStopping = "stopping"
)

// worker is one running process.
type worker struct {
	pid      int
	slot     *slot
	gen      int
	state    string
	started  time.Time
	wasReady bool
	retiring bool // stopped on purpose: its exit is not a crash
	lastPing time.Time
	status   string // last STATUS= it sent
	notify   *notifySocket
	timer    *time.Timer // ready delay or ready timeout, then the grace period
}

// slot is one of the N places a worker runs in; PREFORK_WORKER is its index.
type slot struct {
	index    int
	cur      *worker // the worker serving this slot
	next     *worker // during a reload: its replacement, until it is up
	failures int     // failed starts in a row
	restarts int
	lastExit int
	pending  bool  // a restart is scheduled
	socks    []int // reuseport mode: this slot's own sockets, kept across restarts
	removed  bool  // scaled down: its sockets close once its workers are gone
}

// Events the owner goroutine receives besides exitEvent and noChildrenEvent.
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
	drainDoneEvent  struct{}
	sweepDoneEvent  struct{}
	watchdogTickEvt struct{}
)

type supervisor struct {
	c         *config
	log       *slog.Logger
	policy    restartPolicy
	path      string   // the command, resolved
	argv      []string // its argv
	shim      string   // prefork's own binary
	cred      string   // --user, for the shim
	listeners []*listener
	baseEnv   []string
	events    chan any
	spawner   spawner
	reaper    *reaper
	notify    *notifyDir
	up        *upstream
	rr        *dispatcher

	workers   map[int]*worker
	slots     []*slot
	gen       int
	reloadGen int // the generation a rolling reload brings in; 0 when none runs
	stopping  bool
	sweeping  bool
	upOnce    bool
	done      bool
	exitCode  int
	lastState string // what the status file and STATUS= last said
}

// supervise binds, starts the workers and runs until a stop; it returns the exit status.
func supervise(c *config, stderr io.Writer) int {
	log := newLogger(stderr, c.logFormat, c.verbosity)
	fail := func(code int, format string, a ...any) int {
		log.Error(fmt.Sprintf(format, a...))
		if code == exitUsage {
			fmt.Fprintln(stderr, "Run 'prefork --help' for usage.")
		}
		return code
	}
	setCloseOnExecAll() // nothing prefork inherited may leak into a worker
	s := &supervisor{c: c, log: log, policy: newRestartPolicy(c), up: takeUpstream(),
		workers: map[int]*worker{}, events: make(chan any, 1024), gen: 1}
	var err error
	if s.shim, err = selfExe(); err != nil {
		return fail(exitFailure, "cannot find prefork's own binary: %v", err)
	}
	if c.demo {
		s.path, s.argv = s.shim, []string{"prefork-demo", demoWorkerArg}
	} else {
		path, code, err := resolveCommand(c.command[0])
		if err != nil {
			return fail(code, "%v", err)
		}
		s.path, s.argv = path, c.command
	}
	uid, gid := -1, -1
	if c.user != "" {
		if s.cred, uid, gid, err = lookupUser(c.user); err != nil {
			return fail(exitUsage, "--user %s: %v", c.user, err)
		}
	}
	if c.workers == 0 {
		c.workers = autoWorkers()
	}
	if len(c.specs) == 0 {
		if s.listeners, err = adoptSystemd(); err != nil {
			return fail(exitFailure, "socket activation: %v", err)
		}
		if len(s.listeners) == 0 {
			return fail(exitUsage, "no listeners: give -p PORT or -l ADDR, or start prefork by socket activation")
		}
		for _, l := range s.listeners {
			if c.mode == "rr" && l.spec.network == "udp" {
				return fail(exitUsage, "--mode rr hands over stream connections: adopted socket %s is UDP", l.spec.name)
			}
		}
	} else if s.listeners, err = bindAll(c.specs, c.backlog, c.mode == "reuseport"); err != nil {
		return fail(exitFailure, "%v", err)
	}
	defer closeListeners(s.listeners)
	for _, l := range s.listeners {
		if uid >= 0 && l.spec.network == "unix" {
			os.Chown(l.spec.addr, uid, gid)
		}
		log.Info("listening", "name", l.spec.name, "addr", l.addrString())
	}
	if s.notify, err = newNotifyDir(uid, gid); err != nil {
		return fail(exitFailure, "%v", err)
	}
	defer s.notify.remove()
	if c.mode == "rr" {
		fds := make([]int, len(s.listeners))
		for i, l := range s.listeners {
			fds[i] = l.fd
		}
		s.rr, err = newDispatcher(fds, c.rrWindow, log, func(pid int, err error) { s.events <- brokenEvent{pid, err} })
		if err != nil {
			return fail(exitFailure, "rr dispatcher: %v", err)
		}
		defer s.rr.close()
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
	if err := setSubreaper(); err != nil {
		log.Debug("cannot become child subreaper", "err", err)
	}
	s.baseEnv = cleanEnv(os.Environ())
	s.spawner = newSpawner()
	s.reaper = startReaper(s.events)
	return s.loop()
}

// bindAll opens the listeners, in reuseport mode with SO_REUSEPORT set.
func bindAll(specs []listenSpec, backlog int, reuseport bool) ([]*listener, error) {
	if reuseport {
		return openListenersReuseport(specs, backlog)
	}
	return openListeners(specs, backlog)
}

// cleanEnv drops what prefork sets itself, and what was meant for prefork only.
func cleanEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "LISTEN_"), strings.HasPrefix(k, "PREFORK_"),
			k == "NOTIFY_SOCKET", k == "WATCHDOG_USEC", k == "WATCHDOG_PID", k == "SERVER_STARTER_PORT":
			continue
		}
		out = append(out, kv)
	}
	return out
}

func (s *supervisor) loop() int {
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT,
		syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH)
	defer signal.Stop(sigs)
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
	s.log.Info("starting workers", "workers", s.c.workers, "mode", s.c.mode, "command", strings.Join(s.argv, " "))
	for i := 0; i < s.c.workers; i++ {
		if _, err := s.addSlot(); err != nil {
			s.log.Error(fmt.Sprintf("cannot start %d workers: slot %d: %v", s.c.workers, i, err))
			s.log.Info("hint: raise the descriptor limit (ulimit -n) or run fewer workers (-n)")
			for _, sl := range s.slots {
				if sl.index > 0 {
					closeFds(sl.socks)
				}
			}
			return exitFailure
		}
	}
	for _, sl := range s.slots {
		s.startIn(sl)
	}
	for !s.done {
		s.publish()
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

func (s *supervisor) handle(ev any) {
	switch e := ev.(type) {
	case exitEvent:
		s.exited(e)
	case noChildrenEvent:
		if s.sweeping {
			s.done = true
		}
	case sweepDoneEvent:
		if os.Getpid() == 1 {
			syscall.Kill(-1, syscall.SIGKILL)
		}
		s.log.Warn("descendants of workers still run after the grace period; exiting without them")
		s.done = true
	case readyDelayEvent:
		if s.alive(e.w) {
			s.markReady(e.w)
		}
	case readyTimeoutEvent:
		if s.alive(e.w) && e.w.state == stateStarting {
			s.log.Error("worker not ready in time; killing it", "slot", e.w.slot.index, "pid", e.w.pid, "ready_timeout", s.c.readyTimeout)
			kill(e.w.pid, syscall.SIGKILL)
		}
	case graceEvent:
		if s.alive(e.w) {
			s.log.Warn("worker still running after the grace period; killing it", "slot", e.w.slot.index, "pid", e.w.pid, "grace", s.c.grace)
			kill(e.w.pid, syscall.SIGKILL)
		}
	case restartEvent:
		e.sl.pending = false
		if !s.stopping && !e.sl.removed && e.sl.cur == nil {
			s.startIn(e.sl)
		}
	case notifyEvent:
		if s.alive(e.w) {
			s.notified(e.w, e.msg)
		}
	case brokenEvent:
		if w := s.workers[e.pid]; w != nil {
			s.log.Error("rr channel broken; killing worker", "slot", w.slot.index, "pid", w.pid, "err", e.err)
			kill(w.pid, syscall.SIGKILL)
		}
	case drainDoneEvent:
		s.stopAll()
	}
}

func (s *supervisor) alive(w *worker) bool { return s.workers[w.pid] == w }

// kill signals a worker's whole process group.
func kill(pid int, sig syscall.Signal) { syscall.Kill(-pid, sig) }

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
			s.advanceReload()
		}
	case syscall.SIGTTIN:
		if !s.stopping && len(s.slots) < maxWorkers {
			if sl, err := s.addSlot(); err != nil {
				s.log.Error("cannot add a worker", "err", err)
			} else {
				s.startIn(sl)
			}
		}
	case syscall.SIGTTOU:
		if !s.stopping {
			s.removeSlot()
		}
	default: // USR1, USR2, WINCH
		for _, w := range s.workers {
			kill(w.pid, sig)
		}
	}
}

// addSlot adds a slot (and, in reuseport mode, its own sockets) without starting
// it; if a socket cannot be opened, no slot is added.
func (s *supervisor) addSlot() (*slot, error) {
	sl := &slot{index: len(s.slots), lastExit: -1}
	if s.c.mode == "reuseport" {
		for _, l := range s.listeners {
			fd := l.fd
			if sl.index > 0 {
				var err error
				if fd, err = l.reuseportSocket(s.c.backlog); err != nil {
					closeFds(sl.socks)
					return nil, fmt.Errorf("cannot open another SO_REUSEPORT socket: %w", err)
				}
			}
			sl.socks = append(sl.socks, fd)
		}
	}
	s.slots = append(s.slots, sl)
	return sl, nil
}

// removeSlot scales down by one: the last slot's workers stop gracefully.
func (s *supervisor) removeSlot() {
	if len(s.slots) <= 1 {
		s.log.Info("already at one worker")
		return
	}
	sl := s.slots[len(s.slots)-1]
	s.slots = s.slots[:len(s.slots)-1]
	sl.removed = true
	for _, w := range []*worker{sl.cur, sl.next} {
		if w != nil {
			s.stopWorker(w)
		}
	}
	s.releaseSlot(sl)
	s.advanceReload() // a reload may have waited on the removed slot
}

// releaseSlot closes a removed slot's own sockets once none of its workers is left.
func (s *supervisor) releaseSlot(sl *slot) {
	if !sl.removed || sl.index == 0 {
		return
	}
	for _, w := range s.workers {
		if w.slot == sl {
			return
		}
	}
	closeFds(sl.socks)
	sl.socks = nil
}

func closeFds(fds []int) {
	for _, fd := range fds {
		syscall.Close(fd)
	}
}

// startIn starts the slot's worker; a failed fork counts as a failed start.
func (s *supervisor) startIn(sl *slot) {
	w, err := s.spawn(sl)
	if err != nil {
		s.log.Error("cannot start worker", "slot", sl.index, "err", err)
		s.failedStart(sl, -1)
		return
	}
	sl.cur = w
}

// spawn starts one worker for a slot in the current generation.
func (s *supervisor) spawn(sl *slot) (*worker, error) {
	files := []uintptr{0, 1, 2}
	var rrMaster, rrWorker int = -1, -1
	switch s.c.mode {
	case "rr":
		var err error
		if rrMaster, rrWorker, err = newHandoffPair(); err != nil {
			return nil, err
		}
		files = append(files, uintptr(rrWorker))
	case "reuseport":
		for _, fd := range sl.socks {
			files = append(files, uintptr(fd))
		}
	default:
		for _, l := range s.listeners {
			files = append(files, uintptr(l.fd))
		}
	}
	ns, err := s.notify.open(sl.index)
	if err != nil {
		closeFds([]int{rrMaster, rrWorker})
		return nil, err
	}
	pid, err := s.spawner.start(s.shim, shimArgs(s.path, s.argv), s.workerEnv(sl, ns.path), files)
	if rrWorker >= 0 {
		syscall.Close(rrWorker)
	}
	if err != nil {
		ns.close()
		if rrMaster >= 0 {
			syscall.Close(rrMaster)
		}
		return nil, fmt.Errorf("start %s: %w", s.path, err)
	}
	now := time.Now()
	w := &worker{pid: pid, slot: sl, gen: s.gen, state: stateStarting, started: now, notify: ns}
	s.workers[pid] = w
	if s.rr != nil {
		s.rr.attach(pid, rrMaster)
	}
	go ns.read(func(m map[string]string) { s.events <- notifyEvent{w, m} })
	if s.c.ready == "notify" {
		w.timer = time.AfterFunc(s.c.readyTimeout, func() { s.events <- readyTimeoutEvent{w} })
	} else {
		w.timer = time.AfterFunc(s.c.readyDelay, func() { s.events <- readyDelayEvent{w} })
	}
	s.log.Debug("worker started", "slot", sl.index, "pid", pid, "generation", s.gen)
	return w, nil
}

// workerEnv is the environment of SPEC §2 for one worker.
func (s *supervisor) workerEnv(sl *slot, notifyPath string) []string {
	env := append([]string(nil), s.baseEnv...)
	names := make([]string, len(s.listeners))
	ports := make([]string, len(s.listeners))
	for i, l := range s.listeners {
		names[i] = l.spec.name
		ports[i] = fmt.Sprintf("%s=%d", serverStarterAddr(l), 3+i)
	}
	env = append(env, "LISTEN_FDNAMES="+strings.Join(names, ":"))
	if s.c.mode != "rr" {
		env = append(env, "LISTEN_FDS="+strconv.Itoa(len(s.listeners)),
			"SERVER_STARTER_PORT="+strings.Join(ports, ";"))
	}
	env = append(env,
		"PREFORK_WORKER="+strconv.Itoa(sl.index),
		"PREFORK_WORKERS="+strconv.Itoa(len(s.slots)),
		"PREFORK_GENERATION="+strconv.Itoa(s.gen),
		"PREFORK_MODE="+s.c.mode,
		"NOTIFY_SOCKET="+notifyPath,
		shimEnv+"=1",
		shimPPIDEnv+"="+strconv.Itoa(os.Getpid()))
	if s.c.watchdog > 0 {
		env = append(env, "WATCHDOG_USEC="+strconv.FormatInt(s.c.watchdog.Microseconds(), 10))
	}
	if s.cred != "" {
		env = append(env, shimCredEnv+"="+s.cred)
	}
	return env
}

// serverStarterAddr is the listener's address as Server::Starter writes it.
func serverStarterAddr(l *listener) string {
	if l.spec.network == "unix" {
		return l.spec.addr
	}
	if strings.HasSuffix(l.spec.addr, ":0") {
		return l.addrString()
	}
	return strings.TrimPrefix(l.spec.addr, ":")
}

// markReady makes a starting worker count as up.
func (s *supervisor) markReady(w *worker) {
	if w.state != stateStarting {
		return
	}
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
	w.state, w.wasReady, w.lastPing = stateReady, true, time.Now()
	if s.rr != nil {
		s.rr.ready(w.pid)
	}
	sl := w.slot
	s.log.Debug("worker ready", "slot", sl.index, "pid", w.pid, "generation", w.gen)
	if sl.next == w {
		if sl.cur != nil {
			s.stopWorker(sl.cur)
		}
		sl.cur, sl.next = w, nil
		s.advanceReload()
	}
	if !s.upOnce && s.allReady() {
		s.upOnce = true
		s.log.Info("workers ready", "workers", len(s.slots))
		s.up.send("READY=1\nMAINPID=" + strconv.Itoa(os.Getpid()))
	}
}

func (s *supervisor) allReady() bool {
	for _, sl := range s.slots {
		if sl.cur == nil || sl.cur.state != stateReady {
			return false
		}
	}
	return true
}

// advanceReload starts the next slot's replacement, one slot at a time, so that
// capacity never drops: the old worker stops only once the new one is up.
func (s *supervisor) advanceReload() {
	if s.reloadGen == 0 || s.stopping {
		return
	}
	for _, sl := range s.slots {
		if sl.next != nil {
			return // one at a time
		}
	}
	for _, sl := range s.slots {
		if sl.cur != nil && sl.cur.gen < s.reloadGen {
			w, err := s.spawn(sl)
			if err != nil {
				s.abortReload(sl, err.Error())
				return
			}
			sl.next = w
			return
		}
	}
	s.log.Info("reload complete", "generation", s.reloadGen)
	s.reloadGen = 0
	s.up.send("READY=1")
}

func (s *supervisor) abortReload(sl *slot, why string) {
	s.log.Error("reload aborted; the old workers keep serving", "slot", sl.index, "generation", s.reloadGen, "reason", why)
	s.reloadGen = 0
	s.up.send("READY=1\nSTATUS=reload failed: " + why)
}

// stopWorker asks a worker to stop gracefully and kills it after --grace.
func (s *supervisor) stopWorker(w *worker) {
	s.retire(w)
	kill(w.pid, s.c.stopSignal)
}

// retire marks a worker as leaving: no more connections, SIGKILL after --grace.
func (s *supervisor) retire(w *worker) {
	if w.retiring {
		return
	}
	w.retiring, w.state = true, stateStopping
	if s.rr != nil {
		s.rr.drain(w.pid)
	}
	if w.timer != nil {
		w.timer.Stop()
	}
	w.timer = time.AfterFunc(s.c.grace, func() { s.events <- graceEvent{w} })
}

func (s *supervisor) notified(w *worker, msg map[string]string) {
	if v, ok := msg["STATUS"]; ok {
		w.status = v
	}
	if msg["WATCHDOG"] == "1" {
		w.lastPing = time.Now()
	}
	if msg["READY"] == "1" {
		s.markReady(w)
	}
	if msg["STOPPING"] == "1" && !w.retiring && !s.stopping {
		sl := w.slot
		if !w.wasReady {
			// It never came up: its exit is a failed start, with backoff and
			// --max-restarts; replacing it at once would be a fork storm.
			s.log.Warn("worker sent STOPPING=1 before it was ready", "slot", sl.index, "pid", w.pid)
			return
		}
		s.log.Info("worker is stopping on its own; starting its replacement", "slot", sl.index, "pid", w.pid)
		s.retire(w)
		switch w {
		case sl.next:
			sl.next = nil
			s.abortReload(sl, "the new worker sent STOPPING=1")
		case sl.cur:
			sl.cur = nil
			switch {
			case sl.next != nil: // a reload is already bringing its replacement up
				sl.cur, sl.next = sl.next, nil
				s.advanceReload()
			case !sl.removed:
				s.startIn(sl)
			}
		}
	}
}

// exited handles a reaped child.
func (s *supervisor) exited(e exitEvent) {
	w := s.workers[e.pid]
	if w == nil {
		s.log.Debug("reaped orphan", "pid", e.pid, "status", e.status)
		return
	}
	delete(s.workers, e.pid)
	kill(w.pid, syscall.SIGKILL) // whatever the worker left in its process group
	if w.timer != nil {
		w.timer.Stop()
	}
	w.notify.close()
	if s.rr != nil {
		s.rr.detach(w.pid)
	}
	sl := w.slot
	sl.lastExit = e.status
	uptime := time.Since(w.started)
	s.log.Debug("worker exited", "slot", sl.index, "pid", w.pid, "status", e.status, "uptime", uptime.Round(time.Millisecond))
	switch {
	case s.stopping:
		s.checkDone()
	case w.retiring:
		s.releaseSlot(sl)
	case w == sl.next:
		sl.next = nil
		s.abortReload(sl, fmt.Sprintf("new worker pid %d exited with status %d before it was up", w.pid, e.status))
	case w == sl.cur:
		sl.cur = nil
		if sl.next != nil { // a reload was bringing its replacement up: keep that one
			s.log.Warn("worker exited during a reload; its replacement takes over", "slot", sl.index, "pid", w.pid, "status", e.status)
			sl.cur, sl.next = sl.next, nil
			s.advanceReload()
			return
		}
		if s.policy.failedStart(w.wasReady, uptime) {
			s.failedStart(sl, e.status)
			return
		}
		sl.failures = 0
		s.log.Warn("worker exited; restarting it", "slot", sl.index, "pid", w.pid, "status", e.status)
		sl.restarts++
		s.startIn(sl)
	}
}

// failedStart counts a failed start of a slot and schedules its restart, or
// gives up on a crash loop.
func (s *supervisor) failedStart(sl *slot, status int) {
	sl.failures++
	if s.policy.givesUp(sl.failures) {
		s.log.Error(fmt.Sprintf("crash loop: %s failed to start %d times in a row in slot %d (last exit status %d); giving up",
			s.argv[0], sl.failures, sl.index, status))
		s.exitCode = exitFailure
		s.beginStop(0)
		return
	}
	d := s.policy.delay(sl.failures)
	s.log.Warn("worker failed to start; restarting after backoff", "slot", sl.index, "status", status,
		"failures", sl.failures, "backoff", d.Round(time.Millisecond))
	sl.pending = true
	sl.restarts++
	time.AfterFunc(d, func() { s.events <- restartEvent{sl} })
}

func (s *supervisor) checkWatchdogs() {
	now := time.Now()
	for _, w := range s.workers {
		if w.state == stateReady && now.Sub(w.lastPing) > s.c.watchdog {
			s.log.Error("worker missed its watchdog; aborting it", "slot", w.slot.index, "pid", w.pid, "watchdog", s.c.watchdog)
			w.state = stateStopping
			if s.rr != nil {
				s.rr.drain(w.pid)
			}
			syscall.Kill(w.pid, syscall.SIGABRT)
			w.timer = time.AfterFunc(s.c.grace, func() { s.events <- graceEvent{w} })
		}
	}
}

// beginStop starts a graceful stop, after --drain-delay when one is set.
func (s *supervisor) beginStop(drain time.Duration) {
	if s.stopping {
		return
	}
	s.stopping = true
	s.up.send("STOPPING=1")
	if drain > 0 {
		s.log.Info("draining before stopping workers", "drain_delay", drain)
		time.AfterFunc(drain, func() { s.events <- drainDoneEvent{} })
		return
	}
	s.stopAll()
}

func (s *supervisor) stopAll() {
	s.log.Info("stopping workers", "workers", len(s.workers), "grace", s.c.grace)
	for _, w := range s.workers {
		s.retire(w)
		kill(w.pid, s.c.stopSignal)
	}
	s.checkDone()
}

func (s *supervisor) killAll() {
	for _, w := range s.workers {
		s.retire(w)
		kill(w.pid, syscall.SIGKILL)
	}
}

// checkDone ends the stop once every worker is gone and, as pid 1 or subreaper,
// every descendant they left too (bounded by --grace).
func (s *supervisor) checkDone() {
	if !s.stopping || len(s.workers) > 0 || s.sweeping {
		return
	}
	s.sweeping = true
	s.reaper.wantEmpty.Store(true)
	s.reaper.check()
	time.AfterFunc(s.c.grace, func() { s.events <- sweepDoneEvent{} })
}
