//go:build linux || darwin

// This file holds the start of one worker through the exec shim, its
// environment, what it says on its notify socket, and its leaving: the stop,
// the grace period and its exit; and, after an in-place upgrade, the
// take-over of the workers the image before started. What happens to its
// slot when it comes up, leaves or exits is slots.go.
package main

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prefork/prefork/internal/listenwait"
	"github.com/prefork/prefork/internal/output"
	"github.com/prefork/prefork/internal/sock"
	"github.com/prefork/prefork/internal/upgrade"
)

// spawn starts one worker for a slot in the current generation.
func (s *supervisor) spawn(sl *slot) (*worker, error) {
	p, err := s.env.start(sl)
	if err != nil {
		return nil, err
	}
	w := &worker{pid: p.pid, slot: sl, gen: s.gen, state: stateStarting, started: s.env.now(), notify: p.notify, link: p.link}
	s.workers[p.pid] = w
	p.link.attach(w)
	if p.notify != nil {
		p.notify.start(p.pid, s.notifyTo(w))
	}
	s.armReady(w, p.socks)
	s.log.Debug("worker started", "slot", sl.index, "pid", p.pid, "generation", s.gen)
	return w, nil
}

// notifyTo delivers what w sends on its notify socket to the owner.
func (s *supervisor) notifyTo(w *worker) func(map[string]string) {
	return func(m map[string]string) { s.events <- notifyEvent{w, m} }
}

// startProcess is env.start: the worker's channel, its notify socket, and its
// process, forked through the exec shim.
func (s *supervisor) startProcess(sl *slot) (proc, error) {
	fds, chEnv, lk, err := s.ch.prepare(sl)
	if err != nil {
		return proc{}, err
	}
	ns, err := s.notify.open(sl.index)
	if err != nil {
		lk.abort()
		return proc{}, err
	}
	files := []uintptr{0, 1, 2}
	var out *output.Pair
	if s.out != nil { // --worker-output prefix or json: fd 1 and 2 are the worker's own pipes
		if out, err = s.out.NewPair(); err != nil {
			ns.close()
			lk.abort()
			return proc{}, fmt.Errorf("worker output pipes: %w", err)
		}
		files[1], files[2] = out.Files()
	}
	for _, fd := range fds {
		files = append(files, uintptr(fd))
	}
	var socks []listenwait.Sock
	for _, fd := range fds {
		if sk, err := listenwait.SockOf(fd); err == nil {
			socks = append(socks, sk)
		}
	}
	pid, err := s.spawner.start(s.shim, shimArgs(s.path, s.argv), s.workerEnv(sl, ns.path, chEnv), files)
	if err != nil {
		ns.close()
		lk.abort()
		if out != nil {
			out.Abort()
		}
		return proc{}, fmt.Errorf("start %s: %w", s.path, err)
	}
	if out != nil {
		out.Start(sl.index, pid, s.gen)
	}
	return proc{pid, lk, ns, socks}, nil
}

// workerEnv is the environment of one worker (README: What a worker gets); chEnv is what its
// channel adds (LISTEN_FDS where it inherits listeners).
func (s *supervisor) workerEnv(sl *slot, notifyPath string, chEnv []string) []string {
	env := append([]string(nil), s.baseEnv...)
	names := make([]string, len(s.listeners))
	for i, l := range s.listeners {
		names[i] = l.Spec.Name
	}
	env = append(env, "LISTEN_FDNAMES="+strings.Join(names, ":"))
	env = append(env, chEnv...)
	env = append(env,
		"PREFORK_WORKER="+strconv.Itoa(sl.index),
		"PREFORK_WORKERS="+strconv.Itoa(len(s.slots)),
		"PREFORK_GENERATION="+strconv.Itoa(s.gen),
		"PREFORK_MODE="+s.c.mode.String(),
		"NOTIFY_SOCKET="+notifyPath,
		shimEnv+"=1",
		shimPPIDEnv+"="+strconv.Itoa(os.Getpid()),
		shimDirEnv+"="+s.wd.dir)
	if s.c.watchdog > 0 {
		env = append(env, "WATCHDOG_USEC="+strconv.FormatInt(s.c.watchdog.Microseconds(), 10))
	}
	if s.cred != "" {
		env = append(env, shimCredEnv+"="+s.cred)
	}
	return env
}

// serverStarterAddr is the listener's address as Server::Starter writes it.
func serverStarterAddr(l *sock.Listener) string {
	if l.Spec.Network == "unix" {
		return l.Spec.Addr
	}
	if strings.HasSuffix(l.Spec.Addr, ":0") {
		return l.Bound()
	}
	return strings.TrimPrefix(l.Spec.Addr, ":")
}

// notified handles what a worker sent on its notify socket.
func (s *supervisor) notified(w *worker, msg map[string]string) {
	if v, ok := msg["STATUS"]; ok {
		w.status = v
	}
	if msg["WATCHDOG"] == "1" {
		w.lastPing = s.env.now()
	}
	if msg["READY"] == "1" && s.c.ready != readyOnListen { // listen: only what is seen counts
		s.markReady(w, upNotify)
	}
	if msg["STOPPING"] == "1" && !w.retiring && !s.stopping {
		s.step(slotInput{sl: w.slot, w: w, ev: evStopping, why: whyStopping})
	}
}

// markReady makes a starting worker count as up; a replacement takes over.
func (s *supervisor) markReady(w *worker, how upBy) {
	if w.state != stateStarting {
		return
	}
	w.upBy = how
	s.step(slotInput{sl: w.slot, w: w, ev: evReady})
	if !s.upOnce && s.allReady() {
		s.upOnce = true
		s.log.Info("workers ready", "workers", len(s.slots))
		s.up.send("READY=1\nMAINPID=" + strconv.Itoa(os.Getpid()))
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
	w.stopWatching()
	w.link.drain()
	if w.timer != nil {
		w.timer()
	}
	w.timer = s.env.after(s.c.grace, graceEvent{w})
}

// exited handles a reaped worker.
func (s *supervisor) exited(w *worker, status int) {
	delete(s.workers, w.pid)
	w.stopWatching()
	s.env.kill(-w.pid, syscall.SIGKILL) // whatever the worker left in its process group
	if w.timer != nil {
		w.timer()
	}
	execErr := w.notify.execError() // the shim could not start the command (command.go)
	w.notify.close()
	w.link.detach()
	sl := w.slot
	sl.lastExit = status
	s.log.Debug("worker exited", "slot", sl.index, "pid", w.pid, "status", status,
		"uptime", s.env.now().Sub(w.started).Round(time.Millisecond))
	if execErr != "" {
		s.execFailed(w, status, execErr)
	}
	if s.stopping {
		s.checkDone()
		return
	}
	s.step(slotInput{sl: sl, w: w, ev: evExit, why: execErr, status: status})
	s.releaseSlot(sl)
}

// Readiness seen from outside (--ready auto and listen; internal/listenwait
// looks). seeing is what the run learned.
type seeing struct {
	cannot  bool // a worker's waits could not be read at all: no worker is watched any more
	byDelay bool // auto: a worker was not seen by --ready-timeout, so new ones come up by the delay rule until one is seen
}

// listenEvent is what the listenwait watcher found about a starting worker.
type listenEvent struct{ listenwait.Report }

// watchesListen says whether this run looks for workers waiting for
// connections; where it cannot (macOS), --ready auto warns once at start.
func (s *supervisor) watchesListen() bool {
	if s.c.ready != readyAuto && s.c.ready != readyOnListen {
		return false
	}
	if !listenwait.Supported {
		s.log.Warn("prefork cannot see here whether workers wait for connections; they come up by the delay rule (choose --ready delay, notify or listen)",
			"ready_delay", s.c.readyDelay)
		return false
	}
	return true
}

// armReady starts what makes a new worker up besides READY=1 and Node's
// listening: the ready-delay timer, or the ready-timeout timer and a watch on
// whether it waits for connections on socks.
func (s *supervisor) armReady(w *worker, socks []listenwait.Sock) {
	rule := s.c.ready
	watch := (rule == readyAuto || rule == readyOnListen) && !w.link.saysReady() && s.env.watch != nil && !s.seeing.cannot
	if watch {
		w.unwatch = s.env.watch(w.pid, socks)
	}
	if rule == readyOnNotify || rule == readyOnListen || rule == readyAuto && watch && !s.seeing.byDelay {
		w.timer = s.env.after(s.c.readyTimeout, readyTimeoutEvent{w})
	} else {
		w.timer = s.env.after(s.c.readyDelay, readyDelayEvent{w})
	}
}

// stopWatching forgets whether a worker that is up, leaving or gone waits.
func (w *worker) stopWatching() {
	if w.unwatch != nil {
		w.unwatch()
		w.unwatch = nil
	}
}

// seen handles what the watcher found: a worker seen waiting is up; one whose
// waits cannot be read makes this run give up seeing (auto: the delay rule).
func (s *supervisor) seen(r listenwait.Report) {
	w := s.workers[r.PID]
	if w == nil || w.state != stateStarting || w.unwatch == nil {
		return
	}
	w.unwatch = nil // the watcher forgot it
	if r.Err != nil {
		if !s.seeing.cannot {
			s.log.Warn("cannot see whether workers wait for connections; "+map[bool]string{
				true:  "--ready listen workers not up by --ready-timeout fail",
				false: "they come up by the delay rule (choose --ready delay, notify or listen)"}[s.c.ready == readyOnListen],
				"pid", w.pid, "err", r.Err)
		}
		s.seeing.cannot = true
		if s.c.ready == readyAuto && w.timer != nil {
			w.timer()
			w.timer = s.env.after(max(s.c.readyDelay-s.env.now().Sub(w.started), 0), readyDelayEvent{w})
		}
		return
	}
	s.seeing.byDelay = false
	w.seenIn = r.Way
	s.log.Debug("worker seen waiting for connections", "slot", w.slot.index, "pid", w.pid, "in", r.Way)
	s.markReady(w, upSeen)
}

// upByDelay: under --ready auto, a worker not seen waiting (nor saying it is
// up) by --ready-timeout comes up by the delay rule, and so do the next
// workers of this run until one is seen: a server prefork cannot see is held
// back once, not at every start.
func (s *supervisor) upByDelay(in slotInput) {
	if !s.seeing.byDelay {
		s.log.Warn("worker not seen waiting for connections within --ready-timeout; counting it up, and the next workers after --ready-delay (choose --ready delay, notify or listen)",
			"slot", in.sl.index, "pid", in.w.pid, "ready_timeout", s.c.readyTimeout)
	}
	s.seeing.byDelay = true
	s.markReady(in.w, upDelay)
}

// adoptWorkers takes over the slots and workers of the image before (the
// loop's start after an upgrade): their timers go on from what remained of
// them, their notify sockets are read again, and what the old image had not
// handled yet is handled now.
func (s *supervisor) adoptWorkers() {
	a, now := s.adopt, s.env.now()
	st := a.st
	for _, u := range st.Slots {
		s.slots = append(s.slots, &slot{index: u.Index, failures: u.Failures, restarts: u.Restarts,
			lastExit: u.LastExit, replaced: u.Replaced, socks: u.Socks})
	}
	var ws []*worker
	for _, u := range st.Procs {
		conn, err := upgrade.FileConn(u.NotifyFD, u.NotifyPath)
		if err != nil {
			a.handBack(s.log, fmt.Sprintf("worker pid %d: notify socket: %v", u.PID, err))
			s.log.Error("worker's notify socket is lost; it is not read", "pid", u.PID, "err", err)
		}
		w := &worker{pid: u.PID, slot: s.slots[u.Slot], gen: u.Generation, state: stateStarting, started: now.Add(-u.Age),
			wasReady: u.WasReady, failed: u.Failed, why: u.Why, status: u.Status,
			notify: &notifySocket{path: u.NotifyPath, conn: conn, log: s.notify.log}, link: &signalLink{killMode: s.c.killMode}}
		if u.Ready {
			w.state = stateReady
		}
		if i := slices.Index(upByNames, u.UpBy); i > 0 {
			w.upBy = upBy(i)
		}
		w.seenIn = listenwait.Way(u.SeenIn)
		if u.PingAge >= 0 {
			w.lastPing = now.Add(-u.PingAge)
		}
		ws = append(ws, w)
	}
	// Committed: from here on this image runs the workers.
	for _, w := range ws {
		w.link.attach(w)
		s.workers[w.pid] = w
		w.slot.cur = w
		if w.state == stateStarting && s.c.ready == readyOnNotify {
			w.timer = s.env.after(max(s.c.readyTimeout-now.Sub(w.started), 0), readyTimeoutEvent{w})
		} else if w.state == stateStarting {
			w.timer = s.env.after(max(s.c.readyDelay-now.Sub(w.started), 0), readyDelayEvent{w})
		}
		if w.notify.conn != nil {
			w.notify.start(w.pid, s.notifyTo(w))
		}
	}
	for i, sl := range s.slots {
		if sl.cur == nil {
			d := st.Slots[i].RestartIn
			sl.restartDue = now.Add(d)
			s.env.after(d, restartEvent{sl})
		}
	}
	s.tookOver()
	for _, p := range st.Pending {
		if w := s.workers[p.PID]; p.Exit {
			s.handle(exitEvent{p.PID, p.Status})
		} else if w != nil {
			s.handle(notifyEvent{w, p.Msg})
		}
	}
	for _, sig := range st.Signals {
		select {
		case s.sigs <- syscall.Signal(sig):
		default:
		}
	}
}

// tookOver answers the client that asked for the upgrade, closes the
// inherited descriptors the take-over duplicated, and tells systemd.
func (s *supervisor) tookOver() {
	a, st := s.adopt, s.adopt.st
	if a.back != "" {
		s.log.Warn("upgrade rolled back: the new binary could not take over; this prefork goes on", "binary", st.Exe, "err", a.back)
		if st.Client >= 0 {
			answerFD(st.Client, ctlResponse{Error: fmt.Sprintf("rolled back: %s could not take over (%s); the old prefork goes on", st.Exe, a.back)})
		}
	} else {
		msg := fmt.Sprintf("pid %d runs %s now; %d workers kept (state format %d from %s)", os.Getpid(), version(), len(st.Procs), st.Version, st.Writer)
		s.log.Info("upgraded in place", "binary", st.Exe, "version", version(), "workers", len(st.Procs), "from", st.Writer)
		if st.Client >= 0 {
			answerFD(st.Client, ctlResponse{OK: true, Message: msg})
		}
	}
	for _, fd := range []int{a.fd, a.exeFD} {
		syscall.Close(fd)
	}
	for _, w := range st.Procs {
		syscall.Close(w.NotifyFD)
	}
	if st.Control != nil {
		syscall.Close(st.Control.FD)
	}
	if s.upOnce {
		s.up.send("READY=1\nMAINPID=" + strconv.Itoa(os.Getpid()))
	}
}
