//go:build linux || darwin

// This file holds the slot transitions: what the supervisor does to a slot when
// one of its workers starts, comes up, asks to leave, misses a deadline or exits,
// and the one capacity-keeping replacement step that reloads, STOPPING=1, the
// watchdog, broken channels and the pool's limits all go through.
//
// A slot is empty (no worker: a restart is due, perhaps after a backoff),
// running (cur) or replacing (cur, and next coming up to take over).
//
//	state      event                          action
//	empty      restart due                    start cur                         → running
//	running    cur ready                      count it up
//	running    replace(why)                   start next                        → replacing
//	running    cur STOPPING=1                 cur leaves (drained), replace(why) → replacing
//	running    cur's channel broken           the same, but its exit is a crash  → replacing
//	  …        the same from a young cur¹     cur leaves; its exit is a failed start
//	running    cur misses its watchdog         replace(watchdog); cur gets SIGABRT  → replacing
//	running    cur's --ready-delay passes     up, unless it says so itself (a Node worker's
//	                                          listening): then wait up to --ready-timeout
//	running    cur not ready in time          cur stopped gracefully; a failed start
//	                                          (a Node worker under --ready delay: counted up)
//	running    cur exits, ran properly        start cur at once                 → running
//	running    cur exits, failed start¹       backoff, or give up on a crash loop → empty
//	running    cur exits, retired             start cur at once                 → running
//	replacing  next ready                     stop old cur gracefully (unless leaving); cur = next → running
//	replacing  next exits / not ready in time / STOPPING=1
//	                                          next dropped, cur keeps serving   → running
//	replacing  cur exits                      cur = next (still coming up)      → running
//	replacing  replace(why)                   nothing: one replacement at a time
//	any        removed (scale down)           stop cur and next gracefully; sockets close after
//
// ¹ young: never ready, or a replacement (or a restart after a failed start)
// up for less than --min-uptime.
package main

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

// Why a slot's worker was replaced, as the status file shows it.
const (
	whyReload   = "reload"
	whyStopping = "STOPPING=1"
	whyWatchdog = "watchdog"
	whyBroken   = "channel broken"
)

// addSlot adds a slot (and, in reuseport mode, its own sockets) without starting
// it; if a socket cannot be opened, no slot is added.
func (s *supervisor) addSlot() (*slot, error) {
	sl := &slot{index: len(s.slots), lastExit: -1}
	if s.c.mode == modeReuseport {
		for _, l := range s.listeners {
			fd := l.FD
			if sl.index > 0 {
				var err error
				if fd, err = l.ReuseportSocket(s.c.backlog); err != nil {
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

// scaleTo adds or removes slots until there are n; new slots start at once.
func (s *supervisor) scaleTo(n int) error {
	for len(s.slots) < n {
		sl, err := s.addSlot()
		if err != nil {
			return err
		}
		s.startIn(sl)
	}
	for len(s.slots) > n && len(s.slots) > 1 {
		s.removeSlot()
	}
	return nil
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
		if fd >= 0 {
			syscall.Close(fd)
		}
	}
}

// startIn starts the slot's worker; a failed fork counts as a failed start.
func (s *supervisor) startIn(sl *slot) {
	w, err := s.spawn(sl)
	if err != nil {
		s.log.Error("cannot start worker", "slot", sl.index, "err", err)
		if !s.failed(sl, -1) {
			s.fill(sl)
		}
		return
	}
	sl.cur = w
}

// fill gives an empty slot its worker: the replacement that was coming up, else
// a new one, at once after a worker that ran properly and after the backoff
// after failed starts.
func (s *supervisor) fill(sl *slot) {
	if s.stopping || sl.removed || sl.cur != nil {
		return
	}
	if sl.next != nil {
		sl.cur, sl.next = sl.next, nil
		s.advanceReload()
		return
	}
	d := s.policy.delay(sl.failures)
	if d == 0 {
		s.startIn(sl)
		return
	}
	s.log.Warn("worker failed to start; restarting after backoff", "slot", sl.index, "status", sl.lastExit,
		"failures", sl.failures, "backoff", d.Round(time.Millisecond))
	time.AfterFunc(d, func() { s.events <- restartEvent{sl} })
}

// failed counts a failed start of a slot; on a crash loop prefork gives up and
// failed reports true.
func (s *supervisor) failed(sl *slot, status int) bool {
	sl.failures++
	sl.restarts++
	if !s.policy.givesUp(sl.failures) {
		return false
	}
	s.log.Error(fmt.Sprintf("crash loop: %s failed to start %d times in a row in slot %d (last exit status %d); giving up",
		s.argv[0], sl.failures, sl.index, status))
	s.exitCode = exitFailure
	s.beginStop(0)
	return true
}

// replace starts a new worker in sl that takes over once it is up, so capacity
// never drops; the old one keeps serving if the new one fails. At most one
// replacement per slot is on its way: replace reports whether one is now.
func (s *supervisor) replace(sl *slot, why string) bool {
	if sl.next != nil {
		return true
	}
	if s.stopping || sl.removed || sl.cur == nil {
		return false
	}
	w, err := s.spawn(sl)
	if err != nil {
		s.replaced(sl, why, err)
		return false
	}
	w.why = why
	sl.next = w
	return true
}

// replaced is the outcome of a replacement: err is nil once the new worker took
// over.
func (s *supervisor) replaced(sl *slot, why string, err error) {
	if err == nil {
		sl.replaced = why
		s.log.Debug("worker replaced", "slot", sl.index, "why", why)
	} else if why == whyReload {
		s.abortReload(sl, err.Error())
	} else {
		s.log.Warn("replacement failed; the old worker keeps serving", "slot", sl.index, "why", why, "err", err)
	}
	s.advanceReload()
}

// awaitReady gives a worker that reports being up itself (link.saysReady), and
// has not yet, until --ready-timeout after its start, as --ready notify does.
func (s *supervisor) awaitReady(w *worker) {
	if w.state != stateStarting {
		return
	}
	s.log.Debug("worker not listening yet; waiting for it", "slot", w.slot.index, "pid", w.pid, "ready_timeout", s.c.readyTimeout)
	w.timer = time.AfterFunc(max(s.c.readyTimeout-time.Since(w.started), 0), func() { s.events <- readyTimeoutEvent{w} })
}

// markReady makes a starting worker count as up; a replacement takes over.
func (s *supervisor) markReady(w *worker) {
	if w.state != stateStarting {
		return
	}
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
	w.state, w.wasReady, w.lastPing = stateReady, true, time.Now()
	w.link.ready()
	sl := w.slot
	s.log.Debug("worker ready", "slot", sl.index, "pid", w.pid, "generation", w.gen)
	if sl.next == w {
		old := sl.cur
		sl.cur, sl.next = w, nil
		if old != nil && old.state != stateStopping { // one that is leaving was told already
			s.stopWorker(old)
		}
		s.replaced(sl, w.why, nil)
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

// quit handles a worker that cannot serve any more: it said STOPPING=1, its
// channel broke, or it was not ready in time. A worker that takes over a slot
// is replaced; a young one's leaving is a failed start, so that workers which
// quit at once cannot start a fork storm. With stop set it is also asked to stop.
func (s *supervisor) quit(w *worker, why string, stop bool) {
	sl := w.slot
	// Young: it never came up, or it quits sooner than --min-uptime and is
	// itself a replacement or a restart after a failed start (a worker that
	// says READY=1 then STOPPING=1 at once).
	young := !w.wasReady || (w.why != "" || sl.failures > 0) && time.Since(w.started) < s.c.minUptime
	switch {
	case w == sl.next:
		sl.next = nil
		s.retire(w)
		if stop {
			w.link.stop(s.c.stopSignal)
		}
		s.replaced(sl, w.why, fmt.Errorf("new worker pid %d: %s before it was up", w.pid, why))
	case young:
		s.log.Warn("worker quit young; counting a failed start", "slot", sl.index, "pid", w.pid, "why", why)
		w.failed = true
		s.leave(w)
		if stop {
			w.link.stop(s.c.stopSignal)
		}
	default:
		if why == whyStopping {
			s.log.Info("worker is stopping on its own; starting its replacement", "slot", sl.index, "pid", w.pid)
		} else {
			s.log.Warn("worker cannot serve; stopping it and starting its replacement", "slot", sl.index, "pid", w.pid, "why", why)
		}
		if why == whyBroken {
			// A channel breaks mostly because its worker died (the end closes
			// with it; the reaper reports the exit a moment later). Not retired,
			// its exit is a crash like any other, a failed start when young, so
			// a crash loop ends alike in every mode (as the watchdog's does).
			s.leave(w)
		} else {
			s.retire(w)
		}
		if stop {
			w.link.stop(s.c.stopSignal)
		}
		if w == sl.cur {
			s.replace(sl, why)
		}
	}
}

// stopWorker asks a worker to stop gracefully and kills it after --grace.
func (s *supervisor) stopWorker(w *worker) {
	s.retire(w)
	w.link.stop(s.c.stopSignal)
}

// retire makes a worker leave on purpose: its exit is not a crash.
func (s *supervisor) retire(w *worker) {
	if w.retiring {
		return
	}
	w.retiring = true
	s.leave(w)
}

// leave marks a worker as stopping: no more work, SIGKILL after --grace.
// Unless it is also retired, its exit is a crash that the restart policy handles.
func (s *supervisor) leave(w *worker) {
	if w.state == stateStopping {
		return
	}
	w.state = stateStopping
	w.link.drain()
	if w.timer != nil {
		w.timer.Stop()
	}
	w.timer = time.AfterFunc(s.c.grace, func() { s.events <- graceEvent{w} })
}

// exited handles a reaped worker.
func (s *supervisor) exited(w *worker, status int) {
	delete(s.workers, w.pid)
	kill(w.pid, syscall.SIGKILL) // whatever the worker left in its process group
	if w.timer != nil {
		w.timer.Stop()
	}
	execErr := w.notify.execError() // the shim could not start the command (command.go)
	w.notify.close()
	w.link.detach()
	sl := w.slot
	sl.lastExit = status
	uptime := time.Since(w.started)
	s.log.Debug("worker exited", "slot", sl.index, "pid", w.pid, "status", status, "uptime", uptime.Round(time.Millisecond))
	if execErr != "" {
		s.execFailed(w, status, execErr)
	}
	switch {
	case s.stopping:
		s.checkDone()
		return
	case w == sl.next:
		sl.next = nil
		s.replaced(sl, w.why, fmt.Errorf("new worker pid %d exited with status %d before it was up%s", w.pid, status, colon(execErr)))
	case w == sl.cur:
		sl.cur = nil
		switch {
		case w.retiring:
		case w.failed || s.policy.failedStart(w.wasReady, uptime):
			if s.failed(sl, status) {
				return
			}
			if sl.next != nil {
				s.log.Warn("worker failed to start; its replacement takes over", "slot", sl.index, "pid", w.pid,
					"status", status, "failures", sl.failures)
			}
		default:
			sl.failures = 0
			sl.restarts++
			if sl.next != nil {
				s.log.Warn("worker exited; its replacement takes over", "slot", sl.index, "pid", w.pid, "status", status)
			} else {
				s.log.Warn("worker exited; restarting it", "slot", sl.index, "pid", w.pid, "status", status)
			}
		}
		s.fill(sl)
	}
	s.releaseSlot(sl)
}

// readyTimedOut handles a worker not up by --ready-timeout: it is stopped as
// systemd stops a unit that missed its start timeout, --stop-signal then SIGKILL
// after --grace.
func (s *supervisor) readyTimedOut(w *worker) {
	if s.c.ready == readyOnDelay && w.link.saysReady() && w == w.slot.cur {
		// A Node worker that never listened (a queue consumer has no server):
		// with no worker of the slot to keep serving, it counts up rather than
		// crash-looping. In a reload (w is next) it fails below, and the old
		// worker keeps serving.
		s.log.Warn("node worker did not report listening within --ready-timeout; counting it up",
			"slot", w.slot.index, "pid", w.pid, "ready_timeout", s.c.readyTimeout)
		s.markReady(w)
		return
	}
	s.log.Error("worker not ready in time; stopping it", "slot", w.slot.index, "pid", w.pid, "ready_timeout", s.c.readyTimeout)
	s.quit(w, fmt.Sprintf("not ready within %v", s.c.readyTimeout), true)
}

func (s *supervisor) checkWatchdogs() {
	now := time.Now()
	for _, w := range s.workers {
		if w.state == stateReady && now.Sub(w.lastPing) > s.c.watchdog {
			s.log.Error("worker missed its watchdog; aborting it", "slot", w.slot.index, "pid", w.pid, "watchdog", s.c.watchdog)
			if w == w.slot.cur {
				s.replace(w.slot, whyWatchdog)
			}
			s.leave(w) // not retired: its exit is a crash, and its replacement takes over
			syscall.Kill(w.pid, syscall.SIGABRT)
		}
	}
}
