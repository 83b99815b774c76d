//go:build linux || darwin

// This file holds the rolling reload (HUP) and the stop (TERM, INT, QUIT): the
// supervisor's two walks over every worker; scaling (TTIN, TTOU, --ctl scale,
// the pool), which adds and removes slots; and the in-place upgrade (prefork
// --ctl PATH upgrade), the old image's side: the check of the new binary,
// the state written, the exec. startup.go and workers.go hold the new
// image's side.
package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/prefork/prefork/internal/output"
	"github.com/prefork/prefork/internal/upgrade"
)

// advanceReload replaces the next slot's worker of an older generation, one
// slot at a time, so that capacity never drops: the old worker stops only once
// the new one is up (slots.go). It runs again after every replacement's outcome.
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
			s.replace(sl, whyReload)
			return
		}
	}
	s.reloadFinished(nil)
}

func (s *supervisor) abortReload(sl *slot, why string) {
	s.log.Error("reload aborted; the old workers keep serving", "slot", sl.index, "generation", s.reloadGen, "reason", why)
	s.reloadFinished(fmt.Errorf("slot %d: %s", sl.index, why))
}

// reloadFinished ends the reload that runs: err is nil when every slot runs the
// new generation.
func (s *supervisor) reloadFinished(err error) {
	gen := s.reloadGen
	s.reloadGen = 0
	s.ctlReloadFinished(gen, err)
	if err == nil {
		s.log.Info("reload complete", "generation", gen)
		s.up.send("READY=1")
		return
	}
	s.up.send("READY=1\nSTATUS=reload failed: " + err.Error())
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
		s.env.after(drain, drainDoneEvent{})
		return
	}
	s.stopAll()
}

func (s *supervisor) stopAll() {
	s.log.Info("stopping workers", "workers", len(s.workers), "grace", s.c.grace)
	for _, w := range s.workers {
		s.stopWorker(w)
	}
	s.checkDone()
}

func (s *supervisor) killAll() {
	for _, w := range s.workers {
		s.retire(w)
		s.env.kill(-w.pid, syscall.SIGKILL)
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
	s.env.after(s.c.grace, sweepDoneEvent{})
}

// The in-place upgrade, the old image's side. The owner goroutine checks the
// new binary in a process of its own (the check answers with the state
// formats it reads), then, with nothing else under way, stops the reaper and
// the notify readers, writes the state and executes the new binary in place
// of itself on the spawner's thread (spawn.go). An exec that fails changes
// nothing: the readers and the reaper go on, and what they had delivered is
// handled as it would have been.

// upgradeCheckTimeout bounds the check of the new binary.
const upgradeCheckTimeout = 10 * time.Second

// upgradeRun is the check of the new binary, under way.
type upgradeRun struct {
	e    ctlEvent
	pid  int
	stop func() bool // its timer
}

// upgradeCheckEvent is the check's answer (what it printed), or its timeout.
type upgradeCheckEvent struct {
	run      *upgradeRun
	out      []byte
	timedOut bool
}

// upgradeRefusal says why an upgrade cannot run now; "" when it can.
func (s *supervisor) upgradeRefusal() string {
	switch {
	case !upgrade.Supported:
		return "upgrade needs Linux in this version"
	case s.c.mode == modeRR:
		return "upgrade is not supported in --mode rr yet"
	case s.nc != nil:
		return "upgrade is not supported with Node.js workers (--node-cluster) yet"
	case s.stopping:
		return "prefork is stopping"
	case s.upg != nil:
		return "an upgrade is under way"
	case s.reloadGen != 0:
		return fmt.Sprintf("a reload to generation %d is under way; upgrade once it is done", s.reloadGen)
	case len(s.ctl.scales) > 0:
		return "a scale is under way; upgrade once it is done"
	case s.c.workerOutput != output.Inherit:
		return fmt.Sprintf("upgrade is not supported with --worker-output %s yet", s.c.workerOutput)
	case len(s.retired) > 0:
		return "a removed slot's sockets are still open; upgrade once its workers are gone"
	case s.self.Err != nil:
		return fmt.Sprintf("prefork's own binary: %v", s.self.Err)
	}
	for _, sl := range s.slots {
		if sl.next != nil {
			return fmt.Sprintf("slot %d's worker is being replaced; upgrade once its replacement is up", sl.index)
		}
	}
	for _, w := range s.workers {
		if w.state == stateStopping {
			return fmt.Sprintf("worker pid %d is stopping; upgrade once it is gone", w.pid)
		}
		if w.state == stateStarting && s.c.ready != readyOnDelay && s.c.ready != readyOnNotify {
			return fmt.Sprintf("worker pid %d is starting (--ready %s); upgrade once it is up", w.pid, s.c.ready)
		}
	}
	return ""
}

// ctlUpgrade starts the check of the binary at the path prefork was started from.
func (s *supervisor) ctlUpgrade(e ctlEvent) {
	if why := s.upgradeRefusal(); why != "" {
		e.fail("%s; nothing changed", why)
		return
	}
	r, w, err := os.Pipe()
	if err != nil {
		e.fail("upgrade check: %v; nothing changed", err)
		return
	}
	defer w.Close()
	env := append(slices.Clone(s.baseEnv), upgrade.CheckEnv+"=1")
	pid, err := s.spawner.start(s.self.Path, []string{s.self.Path}, env, []uintptr{0, w.Fd(), 2})
	if err != nil {
		r.Close()
		s.log.Error("upgrade refused", "binary", s.self.Path, "err", upgrade.ExplainStart(s.self.Path, err))
		e.fail("%s; nothing changed", upgrade.ExplainStart(s.self.Path, err))
		return
	}
	s.log.Info("upgrade asked for on the control socket; checking the new binary", "binary", s.self.Path)
	run := &upgradeRun{e: e, pid: pid}
	run.stop = s.env.after(upgradeCheckTimeout, upgradeCheckEvent{run: run, timedOut: true})
	s.upg = run
	go func() {
		out, _ := io.ReadAll(io.LimitReader(r, 4096))
		r.Close()
		s.events <- upgradeCheckEvent{run: run, out: out}
	}()
}

// upgradeChecked judges the check's answer and, when the new binary reads
// this image's state, executes it.
func (s *supervisor) upgradeChecked(ev upgradeCheckEvent) {
	run := ev.run
	if s.upg != run {
		return
	}
	s.upg = nil
	if ev.timedOut {
		kill(run.pid, syscall.SIGKILL)
		s.log.Error("upgrade refused: the new binary did not answer the upgrade check in time", "binary", s.self.Path, "timeout", upgradeCheckTimeout)
		run.e.fail("%s did not answer the upgrade check within %v (not a prefork?); nothing changed", s.self.Path, upgradeCheckTimeout)
		return
	}
	run.stop()
	a, err := upgrade.ParseCheck(ev.out)
	if err == nil {
		err = a.Reads()
	}
	if err != nil {
		s.log.Error("upgrade refused", "binary", s.self.Path, "err", err)
		run.e.fail("%s: %v; nothing changed", s.self.Path, err)
		return
	}
	if why := s.upgradeRefusal(); why != "" { // what changed while the check ran
		run.e.fail("%s; nothing changed", why)
		return
	}
	s.execUpgrade(run.e, a)
}

// execUpgrade writes the state and executes the new image; it returns only
// when the exec failed, and then this image goes on as it was.
func (s *supervisor) execUpgrade(e ctlEvent, a upgrade.Answer) {
	s.log.Info("upgrading in place", "binary", s.self.Path, "to", a.Version, "workers", len(s.workers))
	s.up.send("RELOADING=1\nMONOTONIC_USEC=" + monotonicUsec())
	held, resume := s.quiesce()
	st := s.upgradeState(held)
	if e.conn != nil {
		st.Client = rawFD(e.conn)
	}
	held = slices.DeleteFunc(held, func(ev event) bool {
		c, ok := ev.(ctlEvent)
		if ok { // a request that came meanwhile: its connection ends with this image
			c.fail("prefork is upgrading in place; try again")
		}
		return ok
	})
	signal.Ignore(fatalSignals...)
	for len(s.sigs) > 0 {
		st.Signals = append(st.Signals, int((<-s.sigs).(syscall.Signal)))
	}
	fd, err := upgrade.Write(st)
	keep := append(st.FDs(), fd)
	if err == nil {
		err = upgrade.Keep(keep)
	}
	if err == nil {
		env := append(upgrade.Clean(os.Environ()), upgrade.StateEnv+"="+upgrade.EnvValue(fd, st.ExeFD))
		err = s.spawner.exec(s.self.Path, os.Args, env)
	}
	upgrade.Release(slices.DeleteFunc(keep, func(fd int) bool { return fd < 0 }))
	if fd >= 0 {
		syscall.Close(fd)
	}
	signal.Notify(s.sigs, handledSignals...)
	for _, sig := range st.Signals {
		select {
		case s.sigs <- syscall.Signal(sig):
		default:
		}
	}
	close(resume)
	s.reaper.check()
	for _, w := range s.workers {
		w.notify.resume(w.pid, s.notifyTo(w))
	}
	for _, ev := range held {
		s.handle(ev)
	}
	s.up.send("READY=1")
	s.log.Error("upgrade failed; this prefork goes on", "binary", s.self.Path, "err", err)
	e.fail("exec %s: %v; nothing changed", s.self.Path, err)
}

// quiesce stops the reaper and every notify reader, and returns what they
// delivered meanwhile; closing resume lets the reaper go on.
func (s *supervisor) quiesce() (held []event, resume chan struct{}) {
	resume = make(chan struct{})
	for sent := false; !sent; {
		select {
		case s.reaper.hold <- resume:
			sent = true
		case ev := <-s.events:
			held = append(held, ev)
		}
	}
	for _, w := range s.workers {
		for done := w.notify.pause(); done != nil; {
			select {
			case <-done:
				done = nil
			case ev := <-s.events:
				held = append(held, ev)
			}
		}
	}
	for {
		select {
		case ev := <-s.events:
			held = append(held, ev)
		default:
			return held, resume
		}
	}
}

// upgradeState is this image's state as the new one takes it over.
func (s *supervisor) upgradeState(held []event) *upgrade.State {
	now := s.env.now()
	st := &upgrade.State{Writer: version(), Args: os.Args, Exe: s.self.Path, ExeFD: s.self.FD,
		Command: s.path, Argv: s.argv, WorkDir: s.wd.path, RealDir: s.wd.dir, Cred: s.cred, UID: s.notify.uid, GID: s.notify.gid,
		Workers: s.c.workers, Generation: s.gen, ReloadFailures: s.ctl.reloadFailures, UpOnce: s.upOnce, LastStatus: s.lastStatus,
		Notify: upgrade.NotifyDir{Path: s.notify.path, UID: s.notify.uid, GID: s.notify.gid, Seq: s.notify.seq.Load()}, Client: -1}
	if s.up != nil {
		st.Upstream = s.up.addr
	}
	for _, l := range s.listeners {
		st.Listeners = append(st.Listeners, upgrade.Listener{Name: l.Spec.Name, Network: l.Spec.Network, Addr: l.Spec.Addr,
			Text: l.Spec.Text, Bound: l.Bound(), UnixPath: l.Path(), FD: l.FD})
	}
	for _, sl := range s.slots {
		u := upgrade.Slot{Index: sl.index, Failures: sl.failures, Restarts: sl.restarts, LastExit: sl.lastExit,
			Replaced: sl.replaced, Socks: sl.socks}
		if sl.cur == nil {
			u.RestartIn = max(sl.restartDue.Sub(now), 0)
		}
		st.Slots = append(st.Slots, u)
		if w := sl.cur; w != nil {
			pw := upgrade.Worker{PID: w.pid, Slot: sl.index, Generation: w.gen, Ready: w.state == stateReady,
				Age: now.Sub(w.started), WasReady: w.wasReady, Failed: w.failed, Why: w.why, Status: w.status,
				UpBy: w.upBy.String(), SeenIn: uint8(w.seenIn),
				PingAge: -1, NotifyPath: w.notify.path, NotifyFD: rawFD(w.notify.conn)}
			if !w.lastPing.IsZero() {
				pw.PingAge = now.Sub(w.lastPing)
			}
			st.Procs = append(st.Procs, pw)
		}
	}
	if s.ctl.server != nil {
		st.Control = &upgrade.Socket{Path: s.ctl.server.SocketPath(), FD: s.ctl.server.FD()}
	}
	for _, ev := range held {
		switch e := ev.(type) {
		case exitEvent:
			st.Pending = append(st.Pending, upgrade.Pending{PID: e.pid, Exit: true, Status: e.status})
		case notifyEvent:
			if s.alive(e.w) {
				st.Pending = append(st.Pending, upgrade.Pending{PID: e.w.pid, Msg: e.msg})
			}
		}
	}
	return st
}

// addSlot adds a slot (and, in reuseport mode, its own sockets) without starting
// it; if a socket cannot be opened, or the balance policy cannot take one more
// slot, no slot is added.
func (s *supervisor) addSlot() (*slot, error) {
	sl := &slot{index: len(s.slots), lastExit: -1}
	var reused *slot
	if len(s.retired) > 0 && s.retired[0].index == sl.index {
		// A removed slot of this index still holds its place in the groups:
		// its sockets are this slot's (see releaseSlot).
		reused, s.retired = s.retired[0], s.retired[1:]
		sl.socks, reused.socks = reused.socks, nil
	} else if s.c.mode == modeReuseport {
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
	if err := s.balanceSlots(len(s.slots) + 1); err != nil {
		if reused != nil {
			reused.socks, s.retired = sl.socks, append([]*slot{reused}, s.retired...)
		} else if sl.index > 0 {
			closeFds(sl.socks)
		}
		s.balanceSlots(len(s.slots))
		return nil, err
	}
	s.slots = append(s.slots, sl)
	return sl, nil
}

// keepsGroupOrder says the slots' sockets must keep their places in each
// listener's SO_REUSEPORT group: --balance source's program picks a socket
// by its place, which is the order the sockets joined, and a socket that
// leaves the group gets the last one moved into its place. So a removed
// slot's sockets close from the top of the group down, and a slot added
// again while they are open takes them.
func (s *supervisor) keepsGroupOrder() bool {
	return s.c.mode == modeReuseport && s.c.balanceSet && s.c.balance == balanceSource
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
	if err := s.balanceSlots(len(s.slots)); err != nil {
		s.log.Error("cannot balance over the remaining slots", "err", err)
	}
	s.step(slotInput{sl: sl, ev: evRemove})
	sl.removed = true
	if s.keepsGroupOrder() {
		s.retired = append([]*slot{sl}, s.retired...) // below every retired one
	}
	s.releaseSlot(sl)
	s.advanceReload() // a reload may have waited on the removed slot
}

// releaseSlot closes a removed slot's own sockets once none of its workers is
// left; where the group order counts (keepsGroupOrder), only once every
// retired slot above it has closed its own.
func (s *supervisor) releaseSlot(sl *slot) {
	if !sl.removed || sl.index == 0 {
		return
	}
	if !s.keepsGroupOrder() {
		if !s.hasWorkers(sl) {
			closeFds(sl.socks)
			sl.socks = nil
		}
		return
	}
	for len(s.retired) > 0 {
		top := s.retired[len(s.retired)-1]
		if s.hasWorkers(top) {
			return
		}
		closeFds(top.socks)
		top.socks = nil
		s.retired = s.retired[:len(s.retired)-1]
	}
}

// hasWorkers reports whether a worker of sl is left.
func (s *supervisor) hasWorkers(sl *slot) bool {
	for _, w := range s.workers {
		if w.slot == sl {
			return true
		}
	}
	return false
}

func closeFds(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			syscall.Close(fd)
		}
	}
}
