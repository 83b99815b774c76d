//go:build linux || darwin

// This file holds the worker channel: what connects prefork to a worker besides
// signals and its notify socket, chosen once per run. shared and reuseport pass
// listening sockets and nothing else; rr passes the handoff socket (rr.go); a
// Node.js worker gets the cluster IPC channel (nodeipc.go). The supervisor asks a
// worker's link "it is up", "send it no more work", "stop gracefully", "it is
// gone", never which mode runs.
package main

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"
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
			fds = append(fds, l.fd)
		}
	}
	return fds, listenEnv(c.s.listeners), &signalLink{killMode: c.s.c.killMode}, nil
}

// listenEnv is the environment of SPEC §2 that describes inherited listeners.
func listenEnv(ls []*listener) []string {
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

// nodeChannel is --node-cluster: prefork is the Node.js cluster primary of each
// worker (nodeipc*.go). The worker inherits what shared or reuseport mode gives
// (nothing in rr mode), and after it the IPC channel at NODE_CHANNEL_FD.
type nodeChannel struct {
	s  *supervisor
	nc *nodeCluster
}

func (c nodeChannel) prepare(sl *slot) ([]int, []string, link, error) {
	var fds, socks []int
	var env []string
	switch c.s.c.mode {
	case modeRR:
	case modeReuseport:
		fds, socks, env = append(fds, sl.socks...), sl.socks, listenEnv(c.s.listeners)
	default:
		for _, l := range c.s.listeners {
			fds = append(fds, l.fd)
		}
		env = listenEnv(c.s.listeners)
	}
	master, child, err := newNodePair()
	if err != nil {
		return nil, nil, nil, err
	}
	// NODE_APP_INSTANCE: the slot, as PM2 numbers its cluster instances (apps
	// that run a task in instance 0 only check it).
	env = append(env, "NODE_CHANNEL_FD="+strconv.Itoa(3+len(fds)), "NODE_UNIQUE_ID="+strconv.Itoa(sl.index+1),
		"NODE_APP_INSTANCE="+strconv.Itoa(sl.index))
	fds = append(fds, child)
	return fds, env, &nodeLink{s: c.s, nc: c.nc, master: master, child: child, slot: sl.index, socks: socks}, nil
}

// linkEvent runs fn on the owner goroutine while w is alive: how a link's
// goroutines act on the supervisor's side of a worker.
type linkEvent struct {
	w  *worker
	fn func()
}

// nodeLink is one Node worker's channel. Its fields other than nw are owned by
// the supervisor goroutine.
type nodeLink struct {
	s             *supervisor
	nc            *nodeCluster
	master, child int
	slot          int
	socks         []int
	pid           int
	nw            *nodeWorker
	ended         bool           // the channel is closed
	stopSig       syscall.Signal // to send once the worker closes the channel after disconnect
}

func (l *nodeLink) attach(w *worker) {
	l.pid = w.pid
	syscall.Close(l.child)
	s := l.s
	notify := func(msg map[string]string) {
		if msg["READY"] == "1" && s.c.ready != readyOnDelay {
			delete(msg, "READY") // --ready notify: the worker says READY=1 itself
		}
		if len(msg) > 0 {
			s.events <- notifyEvent{w, msg}
		}
	}
	ended := func(err error) {
		if s.rr != nil {
			s.rr.Shut(w.pid)
		}
		if err != nil {
			s.log.Debug("node channel error", "pid", w.pid, "err", err)
		}
		s.events <- linkEvent{w, l.channelEnded}
	}
	nw, err := l.nc.newNodeWorker(w.pid, l.slot, l.master, l.socks, notify, ended)
	if err != nil {
		go func() { s.events <- brokenEvent{w.pid, err} }()
		return
	}
	l.nw = nw
	if s.rr != nil {
		s.rr.Attach(w.pid, nodeSender{nw}, -1)
	}
}

func (l *nodeLink) abort() { closeFds([]int{l.master, l.child}) }

func (l *nodeLink) ready() {
	if l.s.rr != nil {
		l.s.rr.Ready(l.pid)
	}
}

// saysReady: a cluster worker reports listening when its server is open
// (SPEC §9: that is when it is up), so --ready-delay alone must not count it
// up: an app that takes longer to start, or fails before it listens, would
// take over from a serving worker with nothing listening. That holds from the
// start, not only once the worker said "online": a wrapper that takes longer
// than --ready-delay to exec node (or a loaded machine) sends it late. A
// worker that never listens is counted up at --ready-timeout when it is its
// slot's only one (readyTimedOut). Handle-passing workers (--node-send-server)
// listen on the handle itself and never report it.
func (l *nodeLink) saysReady() bool {
	return l.s.c.nodeSendServer == ""
}

func (l *nodeLink) drain() {
	if l.s.rr != nil {
		l.s.rr.Drain(l.pid)
	}
}

// stop sends disconnect, so that Node closes its servers and finishes what is
// in flight; the stop signal follows once the worker closes the channel. In rr
// mode disconnect waits until the worker has acked every connection it was
// handed and has had nodeSettle to read their requests: Node's server.close()
// destroys connections on which no request has arrived yet (closeIdleConnections).
func (l *nodeLink) stop(sig syscall.Signal) {
	l.drain()
	if l.nw == nil || l.ended {
		l.s.c.killMode.stop(l.pid, sig)
		return
	}
	l.stopSig = sig
	if l.s.rr == nil {
		l.disconnect()
		return
	}
	l.settle(time.Now())
}

// nodeSettle is how long an rr worker gets to read the request on a
// connection it took, before disconnect.
const nodeSettle = 100 * time.Millisecond

// settle sends disconnect once the worker holds no unacked connection and
// nodeSettle has passed since it last did (checked every few milliseconds).
func (l *nodeLink) settle(lastBusy time.Time) {
	if l.ended {
		return
	}
	for _, st := range l.s.rr.Stats() {
		if st.ID == l.pid && st.Inflight > 0 {
			lastBusy = time.Now()
		}
	}
	if time.Since(lastBusy) >= nodeSettle || time.Since(lastBusy) < 0 {
		l.disconnect()
		return
	}
	w := l.s.workers[l.pid]
	if w == nil {
		return // gone meanwhile
	}
	time.AfterFunc(10*time.Millisecond, func() { l.s.events <- linkEvent{w, func() { l.settle(lastBusy) }} })
}

func (l *nodeLink) disconnect() {
	if !l.nw.stop() {
		l.s.c.killMode.stop(l.pid, l.stopSig)
	}
}

// channelEnded runs on the owner goroutine once the worker closed its channel.
func (l *nodeLink) channelEnded() {
	l.ended = true
	if l.stopSig != 0 {
		l.s.c.killMode.stop(l.pid, l.stopSig)
	}
}

func (l *nodeLink) detach() {
	if l.nw != nil {
		l.nw.detach()
	}
	if l.s.rr != nil {
		l.s.rr.Detach(l.pid)
	}
}
