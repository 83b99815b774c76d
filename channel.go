//go:build linux || darwin

// This file holds the worker channel: what connects prefork to a worker besides
// signals and its notify socket, chosen once per run. shared and reuseport pass
// listening sockets and nothing else; rr passes the handoff socket (rr.go); a
// Node.js worker gets the cluster IPC channel (node.go). The supervisor asks a
// worker's link "it is up", "send it no more work", "stop gracefully", "it is
// gone", never which mode runs.
package main

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"

	"github.com/prefork/prefork/internal/sock"
)

// workerChannel prepares, for each new worker, what it inherits and the link
// that speaks to it once it runs.
type workerChannel interface {
	// prepare returns the descriptors the worker gets at fd 3, 4, … (owned by the
	// caller only for the duration of the spawn: prefork keeps its own), the
	// environment the channel adds, and the worker's link.
	prepare(sl *slot) (files []int, env []string, l link, err error)
}

// link is prefork's side of one worker's channel. Its methods run on the owner
// goroutine; a link talks back only by sending events on s.events.
type link interface {
	attach(w *worker)        // the worker runs under w.pid
	abort()                  // the worker could not be started: close what prepare opened
	ready()                  // it is up: it may get work
	saysReady() bool         // it reports being up itself (a Node worker's listening): --ready-delay does not make it up
	drain()                  // it is leaving: no more work to it
	stop(sig syscall.Signal) // ask it to stop gracefully
	detach()                 // its process is gone
}

// newChannel picks the channel for this run.
func (s *supervisor) newChannel() workerChannel {
	if s.nc != nil {
		return nodeChannel{s, s.nc}
	}
	switch s.c.mode {
	case modeRR:
		return handoffChannel{s}
	case modeReuseport:
		return socketChannel{s, true}
	}
	return socketChannel{s, false}
}

// socketChannel is shared and reuseport mode: the worker inherits listening
// sockets (prefork's own, or its slot's SO_REUSEPORT ones) and nothing else.
type socketChannel struct {
	s         *supervisor
	reuseport bool
}

func (c socketChannel) prepare(sl *slot) ([]int, []string, link, error) {
	var fds []int
	if c.reuseport {
		fds = sl.socks
	} else {
		for _, l := range c.s.listeners {
			fds = append(fds, l.FD)
		}
	}
	return fds, listenEnv(c.s.listeners), &signalLink{killMode: c.s.c.killMode}, nil
}

// listenEnv is the environment (README: What a worker gets) that describes inherited listeners.
func listenEnv(ls []*sock.Listener) []string {
	ports := make([]string, len(ls))
	for i, l := range ls {
		ports[i] = fmt.Sprintf("%s=%d", serverStarterAddr(l), 3+i)
	}
	return []string{"LISTEN_FDS=" + strconv.Itoa(len(ls)), "SERVER_STARTER_PORT=" + strings.Join(ports, ";")}
}

// signalLink is a worker without a channel: stopping it is a signal.
type signalLink struct {
	pid      int
	killMode killMode // where the stop signal goes
}

func (l *signalLink) attach(w *worker)        { l.pid = w.pid }
func (l *signalLink) abort()                  {}
func (l *signalLink) ready()                  {}
func (l *signalLink) saysReady() bool         { return false }
func (l *signalLink) drain()                  {}
func (l *signalLink) stop(sig syscall.Signal) { l.killMode.stop(l.pid, sig) }
func (l *signalLink) detach()                 {}
