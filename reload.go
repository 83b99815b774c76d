//go:build linux || darwin

// This file holds the rolling reload (HUP) and the stop (TERM, INT, QUIT): the
// supervisor's two walks over every worker; and scaling (TTIN, TTOU, --ctl
// scale, the pool), which adds and removes slots.
package main

import (
	"fmt"
	"syscall"
	"time"
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
