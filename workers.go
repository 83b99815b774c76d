//go:build linux || darwin

// This file holds the life of one worker: its slot, its start through the exec
// shim, readiness, notifications, its exit, and what the restart policy makes
// of that exit.
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

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
	go ns.read(pid, func(m map[string]string) { s.events <- notifyEvent{w, m} })
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

// stopWorker asks a worker to stop gracefully and kills it after --grace.
func (s *supervisor) stopWorker(w *worker) {
	s.retire(w)
	kill(w.pid, s.c.stopSignal)
}

// retire makes a worker leave on purpose: its exit is not a crash.
func (s *supervisor) retire(w *worker) {
	if w.retiring {
		return
	}
	w.retiring = true
	s.leave(w)
}

// leave marks a worker as stopping: no more connections, SIGKILL after --grace.
// Unless it is also retired, its exit is a crash that the restart policy handles.
func (s *supervisor) leave(w *worker) {
	w.state = stateStopping
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
			s.leave(w) // not retired: it is replaced once it exits
			syscall.Kill(w.pid, syscall.SIGABRT)
		}
	}
}
