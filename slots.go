//go:build linux || darwin

// This file holds the slot table: what the supervisor does to a slot when one
// of its workers starts, comes up, asks to leave, misses a deadline or exits,
// and the one capacity-keeping replacement that reloads, STOPPING=1, the
// watchdog, broken channels and the pool's limits all go through.
//
// A slot is empty (no worker: a restart is due, perhaps after a backoff),
// running (cur) or replacing (cur, and next coming up to take over). An event
// is the slot's own (a restart due, a replacement asked, a scale-down) or one
// of a worker's: cur, next, or an old one that already left the slot. Its
// handler does what happens to the worker itself (its state, timers and
// channel); step then takes the first row of slotTable that matches the slot's
// state, whose event it is, the event and the row's condition, and runs the
// row's action. An event no row matches changes nothing. A removed slot takes
// no event of its own, and while prefork stops the table is not consulted:
// every worker is stopping, and an exit only counts towards the end of the
// stop (reload.go). The rows, as TestSlotTableDoc renders slotTable:
//
//	state              whose     event                when          action → state
//	empty              slot      restart due                        start cur → running
//	running            slot      replace                            start next → replacing
//	replacing          slot      replace                            nothing: one replacement at a time → replacing
//	any                slot      removed                            stop cur and next gracefully; the sockets close after them → empty
//	running,replacing  cur       ready                              count it up → (same)
//	replacing          next      ready                              stop cur gracefully unless it is leaving; next is cur → running
//	running,replacing  cur,next  ready delay passed   says it       wait for it until --ready-timeout → (same)
//	running,replacing  cur       ready delay passed                 count it up → (same)
//	replacing          next      ready delay passed                 stop cur gracefully unless it is leaving; next is cur → running
//	running,replacing  cur       ready timeout        Node, delay   count it up (a Node worker that never listens) → (same)
//	running,replacing  cur       ready timeout        auto, unseen  count it up by the delay rule, with one warning → (same)
//	replacing          next      ready timeout        auto, unseen  by the delay rule, with one warning: stop cur gracefully; next is cur → running
//	replacing          next      ready timeout                      next stopped; cur keeps serving → running
//	running,replacing  cur       ready timeout                      cur stopped gracefully; its exit is a failed start → (same)
//	replacing          next      STOPPING=1                         next dropped; cur keeps serving → running
//	running,replacing  cur       STOPPING=1           young         cur leaves; its exit is a failed start → (same)
//	running            cur       STOPPING=1                         cur leaves (drained); start next → replacing
//	any                cur,old   STOPPING=1                         it leaves (drained) → (same)
//	replacing          next      channel broken                     next stopped; cur keeps serving → running
//	running,replacing  cur       channel broken       young         cur stopped; its exit is a failed start → (same)
//	running            cur       channel broken                     cur stopped, its exit a crash; start next → replacing
//	any                cur,old   channel broken                     it is stopped, its exit a crash → (same)
//	running            cur       missed watchdog                    start next; cur gets SIGABRT, its exit a crash → replacing
//	any                cur,old   missed watchdog                    it gets SIGABRT, its exit a crash → (same)
//	replacing          next      exits                              next dropped; cur keeps serving → running
//	running,replacing  cur       exits                retired       start cur again, or next takes over → running
//	running            cur       exits                failed start  backoff, or give up on a crash loop → empty
//	replacing          cur       exits                failed start  next takes over → running
//	running,replacing  cur       exits                              start cur at once, or next takes over → running
//
// young: never up, or a replacement (or a restart after a failed start) up for
// less than --min-uptime. failed start: it quit young, was never up, or ran for
// less than --min-uptime. says it: it reports being up itself (a Node worker's
// listening). Node, delay: a Node worker under --ready delay or auto (in a
// reload, as next, it fails instead, and the old worker keeps serving). auto,
// unseen: any other worker under --ready auto, not seen waiting for
// connections (workers.go: upByDelay). An old worker's slot is in any state
// for the table.
package main

import (
	"fmt"
	"syscall"
	"time"
)

// slotState is a set of slot states: one, as sl.state() reports it, or several
// in a row of the table.
type slotState uint8

const (
	slotEmpty     slotState = 1 << iota // no worker: a restart is due
	slotRunning                         // cur
	slotReplacing                       // cur, and next coming up
	slotAny       = slotEmpty | slotRunning | slotReplacing
)

func (sl *slot) state() slotState {
	switch {
	case sl.cur == nil:
		return slotEmpty
	case sl.next != nil:
		return slotReplacing
	}
	return slotRunning
}

// whose says whose event it is: the slot's own, or one of a worker's.
type whose uint8

const (
	ofSlot whose = 1 << iota
	ofCur
	ofNext
	ofOld // a worker that left its slot: replaced, or its slot removed
)

func (sl *slot) whose(w *worker) whose {
	switch {
	case w == nil:
		return ofSlot
	case w == sl.cur:
		return ofCur
	case w == sl.next:
		return ofNext
	}
	return ofOld
}

// slotEvent is what happened.
type slotEvent uint8

const (
	evRestart      slotEvent = iota // a new slot, or the backoff after a failed start passed
	evReplace                       // a reload, STOPPING=1, the watchdog, the pool's limits
	evRemove                        // scale down
	evReady                         // READY=1, a Node worker's listening, or seen waiting for connections
	evReadyDelay                    // --ready-delay passed
	evReadyTimeout                  // --ready-timeout passed
	evStopping                      // STOPPING=1
	evBroken                        // its channel broke
	evWatchdog                      // it missed its watchdog
	evExit                          // reaped
)

// cond is a row's condition beyond state, whose and event.
type cond uint8

const (
	always cond = iota
	ifSaysReady
	ifNodeDelay
	ifAutoUnseen
	ifYoung
	ifRetired
	ifFailedStart
)

// slotInput is one event for step.
type slotInput struct {
	sl     *slot
	w      *worker // nil for the slot's own events
	ev     slotEvent
	why    string // why: a replacement's reason, or why a worker cannot serve; an exit: the exec error
	status int    // an exit's status
}

// transition is one row of the slot table.
type transition struct {
	from slotState
	who  whose
	on   slotEvent
	when cond
	do   string // the action, for the table above
	to   slotState
	act  func(s *supervisor, in slotInput)
}

const same slotState = 0 // a row's to: the state does not change

// slotTable is set in init: its actions refer back to step.
var slotTable []transition

func init() { slotTable = slotRows() }

func slotRows() []transition {
	return []transition{
		{slotEmpty, ofSlot, evRestart, always, "start cur", slotRunning, (*supervisor).startCur},
		{slotRunning, ofSlot, evReplace, always, "start next", slotReplacing, (*supervisor).startNext},
		{slotReplacing, ofSlot, evReplace, always, "nothing: one replacement at a time", slotReplacing, nil},
		{slotAny, ofSlot, evRemove, always, "stop cur and next gracefully; the sockets close after them", slotEmpty, (*supervisor).stopSlot},
		{slotRunning | slotReplacing, ofCur, evReady, always, "count it up", same, (*supervisor).countUp},
		{slotReplacing, ofNext, evReady, always, "stop cur gracefully unless it is leaving; next is cur", slotRunning, (*supervisor).takeOver},
		{slotRunning | slotReplacing, ofCur | ofNext, evReadyDelay, ifSaysReady, "wait for it until --ready-timeout", same, (*supervisor).awaitReady},
		{slotRunning | slotReplacing, ofCur, evReadyDelay, always, "count it up", same, (*supervisor).countUp},
		{slotReplacing, ofNext, evReadyDelay, always, "stop cur gracefully unless it is leaving; next is cur", slotRunning, (*supervisor).takeOver},
		{slotRunning | slotReplacing, ofCur, evReadyTimeout, ifNodeDelay, "count it up (a Node worker that never listens)", same, (*supervisor).neverListened},
		{slotRunning | slotReplacing, ofCur, evReadyTimeout, ifAutoUnseen, "count it up by the delay rule, with one warning", same, (*supervisor).upByDelay},
		{slotReplacing, ofNext, evReadyTimeout, ifAutoUnseen, "by the delay rule, with one warning: stop cur gracefully; next is cur", slotRunning, (*supervisor).upByDelay},
		{slotReplacing, ofNext, evReadyTimeout, always, "next stopped; cur keeps serving", slotRunning, func(s *supervisor, in slotInput) { s.notReady(in); s.dropNext(in) }},
		{slotRunning | slotReplacing, ofCur, evReadyTimeout, always, "cur stopped gracefully; its exit is a failed start", same, func(s *supervisor, in slotInput) { s.notReady(in); s.quitYoung(in) }},
		{slotReplacing, ofNext, evStopping, always, "next dropped; cur keeps serving", slotRunning, (*supervisor).dropNext},
		{slotRunning | slotReplacing, ofCur, evStopping, ifYoung, "cur leaves; its exit is a failed start", same, (*supervisor).quitYoung},
		{slotRunning, ofCur, evStopping, always, "cur leaves (drained); start next", slotReplacing, (*supervisor).cannotServe},
		{slotAny, ofCur | ofOld, evStopping, always, "it leaves (drained)", same, (*supervisor).cannotServe},
		{slotReplacing, ofNext, evBroken, always, "next stopped; cur keeps serving", slotRunning, (*supervisor).dropNext},
		{slotRunning | slotReplacing, ofCur, evBroken, ifYoung, "cur stopped; its exit is a failed start", same, (*supervisor).quitYoung},
		{slotRunning, ofCur, evBroken, always, "cur stopped, its exit a crash; start next", slotReplacing, (*supervisor).cannotServe},
		{slotAny, ofCur | ofOld, evBroken, always, "it is stopped, its exit a crash", same, (*supervisor).cannotServe},
		{slotRunning, ofCur, evWatchdog, always, "start next; cur gets SIGABRT, its exit a crash", slotReplacing, (*supervisor).abort},
		{slotAny, ofCur | ofOld, evWatchdog, always, "it gets SIGABRT, its exit a crash", same, (*supervisor).abort},
		{slotReplacing, ofNext, evExit, always, "next dropped; cur keeps serving", slotRunning, (*supervisor).nextExited},
		{slotRunning | slotReplacing, ofCur, evExit, ifRetired, "start cur again, or next takes over", slotRunning, (*supervisor).curExited},
		{slotRunning, ofCur, evExit, ifFailedStart, "backoff, or give up on a crash loop", slotEmpty, (*supervisor).curFailed},
		{slotReplacing, ofCur, evExit, ifFailedStart, "next takes over", slotRunning, (*supervisor).curFailed},
		{slotRunning | slotReplacing, ofCur, evExit, always, "start cur at once, or next takes over", slotRunning, (*supervisor).curCrashed},
	}
}

// step runs the slot table for one event.
func (s *supervisor) step(in slotInput) {
	if s.stopping || in.w == nil && in.sl.removed {
		return
	}
	st, who := in.sl.state(), in.sl.whose(in.w)
	if who == ofOld {
		st = slotAny
	}
	for i := range slotTable {
		r := &slotTable[i]
		if r.from&st != 0 && r.who&who != 0 && r.on == in.ev && s.holds(r.when, in) {
			if r.act != nil {
				r.act(s, in)
			}
			return
		}
	}
}

func (s *supervisor) holds(c cond, in slotInput) bool {
	w := in.w
	switch c {
	case ifSaysReady:
		return w.link.saysReady()
	case ifNodeDelay:
		return (s.c.ready == readyOnDelay || s.c.ready == readyAuto) && w.link.saysReady()
	case ifAutoUnseen:
		return s.c.ready == readyAuto && !w.link.saysReady()
	case ifYoung:
		return !w.wasReady || (w.why != "" || in.sl.failures > 0) && s.env.now().Sub(w.started) < s.c.minUptime
	case ifRetired:
		return w.retiring
	case ifFailedStart:
		return w.failed || s.policy.failedStart(w.wasReady, s.env.now().Sub(w.started))
	}
	return true
}

// Why a slot's worker was replaced, as the status file shows it.
const (
	whyReload   = "reload"
	whyStopping = "STOPPING=1"
	whyWatchdog = "watchdog"
	whyBroken   = "channel broken"
)

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
	sl.restartDue = s.env.now().Add(d)
	s.env.after(d, restartEvent{sl})
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
	s.step(slotInput{sl: sl, ev: evReplace, why: why})
	return sl.next != nil
}

func (s *supervisor) startCur(in slotInput) { s.startIn(in.sl) }

func (s *supervisor) startNext(in slotInput) {
	w, err := s.spawn(in.sl)
	if err != nil {
		s.replaced(in.sl, in.why, err)
		return
	}
	w.why = in.why
	in.sl.next = w
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

// stopSlot stops a removed slot's workers; they leave it.
func (s *supervisor) stopSlot(in slotInput) {
	for _, w := range []*worker{in.sl.cur, in.sl.next} {
		if w != nil {
			s.stopWorker(w)
		}
	}
	in.sl.cur, in.sl.next = nil, nil
}

// countUp makes a starting worker up: it gets work from now on.
func (s *supervisor) countUp(in slotInput) {
	w := in.w
	if w.timer != nil {
		w.timer()
		w.timer = nil
	}
	w.state, w.wasReady, w.lastPing = stateReady, true, s.env.now()
	if w.upBy == upNot {
		w.upBy = upDelay // --ready-delay passed
	}
	w.stopWatching()
	w.link.ready()
	s.log.Debug("worker ready", "slot", in.sl.index, "pid", w.pid, "generation", w.gen)
}

// takeOver makes a replacement that came up the slot's worker.
func (s *supervisor) takeOver(in slotInput) {
	s.countUp(in)
	sl, old := in.sl, in.sl.cur
	sl.cur, sl.next = in.w, nil
	if old.state != stateStopping { // one that is leaving was told already
		s.stopWorker(old)
	}
	s.replaced(sl, in.w.why, nil)
}

// awaitReady gives a worker that reports being up itself (link.saysReady)
// until --ready-timeout after its start, as --ready notify does.
func (s *supervisor) awaitReady(in slotInput) {
	w := in.w
	s.log.Debug("worker not listening yet; waiting for it", "slot", in.sl.index, "pid", w.pid, "ready_timeout", s.c.readyTimeout)
	w.timer = s.env.after(max(s.c.readyTimeout-s.env.now().Sub(w.started), 0), readyTimeoutEvent{w})
}

// neverListened counts up a Node worker that never listened (a queue consumer
// has no server): with no worker of the slot to keep serving, it counts up
// rather than crash-looping. In a reload (it is next) it fails instead, and the
// old worker keeps serving.
func (s *supervisor) neverListened(in slotInput) {
	s.log.Warn("node worker did not report listening within --ready-timeout; counting it up",
		"slot", in.sl.index, "pid", in.w.pid, "ready_timeout", s.c.readyTimeout)
	s.markReady(in.w, upDelay)
}

// notReady: a worker not up by --ready-timeout is stopped as systemd stops a
// unit that missed its start timeout, --stop-signal then SIGKILL after --grace.
func (s *supervisor) notReady(in slotInput) {
	s.log.Error("worker not ready in time; stopping it", "slot", in.sl.index, "pid", in.w.pid, "ready_timeout", s.c.readyTimeout)
}

func (s *supervisor) allReady() bool {
	for _, sl := range s.slots {
		if sl.cur == nil || sl.cur.state != stateReady {
			return false
		}
	}
	return true
}

// tellStop asks a worker that cannot serve to stop, unless it said STOPPING=1
// itself.
func (s *supervisor) tellStop(in slotInput) {
	if in.ev != evStopping {
		in.w.link.stop(s.c.stopSignal)
	}
}

// dropNext gives up a replacement that quit before it was up.
func (s *supervisor) dropNext(in slotInput) {
	w := in.w
	in.sl.next = nil
	s.retire(w)
	s.tellStop(in)
	s.replaced(in.sl, w.why, fmt.Errorf("new worker pid %d: %s before it was up", w.pid, in.why))
}

// quitYoung: a young worker's leaving is a failed start, so that workers which
// quit at once cannot start a fork storm.
func (s *supervisor) quitYoung(in slotInput) {
	w := in.w
	s.log.Warn("worker quit young; counting a failed start", "slot", in.sl.index, "pid", w.pid, "why", in.why)
	w.failed = true
	s.leave(w)
	s.tellStop(in)
}

// cannotServe handles a worker that said STOPPING=1 or whose channel broke: it
// leaves, and the slot's worker is replaced.
func (s *supervisor) cannotServe(in slotInput) {
	w := in.w
	if in.ev == evStopping {
		s.log.Info("worker is stopping on its own; starting its replacement", "slot", in.sl.index, "pid", w.pid)
		s.retire(w)
	} else {
		s.log.Warn("worker cannot serve; stopping it and starting its replacement", "slot", in.sl.index, "pid", w.pid, "why", in.why)
		// A channel breaks mostly because its worker died (the end closes
		// with it; the reaper reports the exit a moment later). Not retired,
		// its exit is a crash like any other, a failed start when young, so
		// a crash loop ends alike in every mode (as the watchdog's does).
		s.leave(w)
	}
	s.tellStop(in)
	if w == in.sl.cur {
		s.replace(in.sl, in.why)
	}
}

// abort handles a worker that missed its watchdog: SIGABRT, and its
// replacement takes over.
func (s *supervisor) abort(in slotInput) {
	w := in.w
	s.log.Error("worker missed its watchdog; aborting it", "slot", in.sl.index, "pid", w.pid, "watchdog", s.c.watchdog)
	if w == in.sl.cur {
		s.replace(in.sl, whyWatchdog)
	}
	s.leave(w) // not retired: its exit is a crash, and its replacement takes over
	s.env.kill(w.pid, syscall.SIGABRT)
}

func (s *supervisor) checkWatchdogs() {
	now := s.env.now()
	for _, w := range s.workers {
		if w.state == stateReady && now.Sub(w.lastPing) > s.c.watchdog {
			s.step(slotInput{sl: w.slot, w: w, ev: evWatchdog})
		}
	}
}

func (s *supervisor) nextExited(in slotInput) {
	in.sl.next = nil
	s.replaced(in.sl, in.w.why, fmt.Errorf("new worker pid %d exited with status %d before it was up%s", in.w.pid, in.status, colon(in.why)))
}

func (s *supervisor) curExited(in slotInput) {
	in.sl.cur = nil
	s.fill(in.sl)
}

func (s *supervisor) curFailed(in slotInput) {
	sl := in.sl
	sl.cur = nil
	if s.failed(sl, in.status) {
		return
	}
	if sl.next != nil {
		s.log.Warn("worker failed to start; its replacement takes over", "slot", sl.index, "pid", in.w.pid,
			"status", in.status, "failures", sl.failures)
	}
	s.fill(sl)
}

func (s *supervisor) curCrashed(in slotInput) {
	sl := in.sl
	sl.cur = nil
	sl.failures = 0
	sl.restarts++
	if sl.next != nil {
		s.log.Warn("worker exited; its replacement takes over", "slot", sl.index, "pid", in.w.pid, "status", in.status)
	} else {
		s.log.Warn("worker exited; restarting it", "slot", sl.index, "pid", in.w.pid, "status", in.status)
	}
	s.fill(sl)
}
