//go:build linux || darwin

// This file holds the start of one worker through the exec shim, its
// environment, and what it says on its notify socket. What happens to its slot
// when it comes up, leaves or exits is slots.go.
package main

import (
	"fmt"
	"github.com/prefork/prefork/internal/sock"
	"os"
	"strconv"
	"strings"
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
	if s.c.ready == readyOnNotify {
		w.timer = s.env.after(s.c.readyTimeout, readyTimeoutEvent{w})
	} else {
		w.timer = s.env.after(s.c.readyDelay, readyDelayEvent{w})
	}
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
	for _, fd := range fds {
		files = append(files, uintptr(fd))
	}
	pid, err := s.spawner.start(s.shim, shimArgs(s.path, s.argv), s.workerEnv(sl, ns.path, chEnv), files)
	if err != nil {
		ns.close()
		lk.abort()
		return proc{}, fmt.Errorf("start %s: %w", s.path, err)
	}
	return proc{pid, lk, ns}, nil
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
	if msg["READY"] == "1" {
		s.markReady(w)
	}
	if msg["STOPPING"] == "1" && !w.retiring && !s.stopping {
		s.step(slotInput{sl: w.slot, w: w, ev: evStopping, why: whyStopping})
	}
}
