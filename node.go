//go:build linux || darwin

// This file holds the supervisor's side of --node-cluster: whether prefork is
// the Node.js cluster primary of its workers, the cluster it keeps
// (internal/nodecluster, which owns the protocol) and each worker's link to
// it. What the cluster reports comes back to the supervisor goroutine as a
// nodeLinkEvent, and every call into it is made there.
package main

import (
	"errors"
	"log/slog"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/prefork/prefork/internal/nodecluster"
	"github.com/prefork/prefork/internal/rr"
	"github.com/prefork/prefork/internal/sock"
)

// nodeClusterOn reports whether prefork is the Node cluster primary of its
// workers: --node-cluster on, or auto and the command's executable is named
// node or nodejs (path is the command resolved, which may be a link to it).
func nodeClusterOn(c *config, path string) bool {
	switch c.nodeCluster {
	case nodeOn:
		return true
	case nodeOff:
		return false
	}
	if c.demo || len(c.command) == 0 {
		return false
	}
	isNode := func(p string) bool {
		b := filepath.Base(p)
		return b == "node" || b == "nodejs"
	}
	return isNode(c.command[0]) || isNode(path)
}

// newNodeCluster is the cluster of this run's Node workers over prefork's
// listeners; d is the rr dispatcher, nil in other modes.
func newNodeCluster(c *config, log *slog.Logger, listeners []*sock.Listener, d *rr.Dispatcher) *nodecluster.Cluster {
	nc := nodecluster.Config{Log: log, Listeners: listeners, Reuseport: c.mode == modeReuseport,
		Backlog: c.backlog, SendServer: c.nodeSendServer, ClosingWait: c.grace / 2, Reserve: nodeReserve(c, len(listeners))}
	if d != nil {
		d.SetNonblockConns()
		nc.RR, nc.ConnsNonblock = d, true
	}
	return nodecluster.New(nc)
}

// nodeReserve is how many descriptors prefork keeps free for itself whatever
// its Node workers ask it to bind: what the pool needs (fdBudget, beside what
// is open), in rr mode the connections it may hold unacked (up to 16 per
// worker here; accepting pauses beyond), and 64 for control clients.
func nodeReserve(c *config, listeners int) int {
	workers := max(c.workers, c.poolMax)
	need := fdBudget(c.mode, listeners, workers, 0) + 64
	if c.mode == modeRR {
		need += workers * min(c.rrWindow, 16)
	}
	return need
}

// nodeChannel is --node-cluster: prefork is the Node.js cluster primary of each
// worker (internal/nodecluster). The worker inherits what shared or reuseport mode gives
// (nothing in rr mode), and after it the IPC channel at NODE_CHANNEL_FD.
type nodeChannel struct {
	s  *supervisor
	nc *nodecluster.Cluster
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
			fds = append(fds, l.FD)
		}
		env = listenEnv(c.s.listeners)
	}
	master, child, err := nodecluster.NewPair()
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

// channelGoneGrace is how long an rr worker whose channel closed may take to
// exit before it counts as broken.
const channelGoneGrace = time.Second

// nodeLinkEvent is what a Node worker's reader or timers hand the owner
// goroutine: the owner gives it to the worker's link while w is alive.
type nodeLinkEvent struct {
	w *worker
	l *nodeLink
	e nodecluster.Event
}

// nodeLink is one Node worker's channel, owned by the supervisor goroutine.
type nodeLink struct {
	s             *supervisor
	nc            *nodecluster.Cluster
	master, child int
	slot          int
	socks         []int
	pid           int
	nw            *nodecluster.Worker
	w             *worker
	stopping      bool           // stop was called
	stopSig       syscall.Signal // to send once the worker closes the channel after disconnect
	stopDue       func() bool    // stops the timer that sends stopSig if the channel stays open (nodeStopWait)
}

// nodeStopEvent is the end of a Node worker's nodeStopWait: its channel is
// still open after disconnect.
type nodeStopEvent struct {
	w *worker
	l *nodeLink
}

// nodeStopWait is how long a stopping Node worker has, after disconnect, to
// close its channel before it gets --stop-signal: half of --grace, at most
// 5 s. disconnect closes its servers and waits for its connections to end,
// and long-lived ones (WebSocket, server-sent events) never do; the signal
// runs the app's own shutdown (a ws server closing its clients with 1001)
// well before SIGKILL at --grace.
func nodeStopWait(grace time.Duration) time.Duration { return min(grace/2, 5*time.Second) }

func (l *nodeLink) attach(w *worker) {
	l.pid, l.w = w.pid, w
	syscall.Close(l.child)
	s := l.s
	post := func(e nodecluster.Event) { s.events <- nodeLinkEvent{w, l, e} }
	nw, err := l.nc.Attach(w.pid, l.slot, l.master, l.socks, post)
	if err != nil {
		go func() { s.events <- brokenEvent{w.pid, err} }()
		return
	}
	l.nw = nw
	if s.rr != nil {
		s.rr.Attach(w.pid, nw, -1)
		s.rr.SetSlot(w.pid, l.slot)
	}
}

// event acts on what the worker's channel reported (owner goroutine).
func (l *nodeLink) event(w *worker, e nodecluster.Event) {
	out, err := l.nw.Handle(e)
	switch out {
	case nodecluster.Ready:
		if l.s.c.ready != readyOnNotify { // with --ready notify the worker says READY=1 itself
			l.s.markReady(w, upListening)
		}
	case nodecluster.Stopping:
		l.s.notified(w, map[string]string{"STOPPING": "1"})
	case nodecluster.Ended:
		switch {
		case l.stopSig != 0:
			l.signal()
		case errors.Is(err, nodecluster.ErrLineTooLong):
			l.s.handle(brokenEvent{w.pid, err})
		case l.s.rr != nil && w.state != stateStopping:
			// In rr mode a worker gets its connections on the channel only: one
			// that closed it and keeps running serves nothing. Its unacked
			// connections went to the others already (nodecluster's Shut). A
			// worker that dies closes its channel too, a moment before the
			// reaper reports its exit: it is broken only if it is still there
			// after channelGoneGrace.
			l.s.env.after(channelGoneGrace, brokenEvent{w.pid, errors.New("it closed its node cluster channel and kept running")})
		case err != nil:
			l.s.log.Debug("node channel error", "pid", w.pid, "err", err)
		}
	case nodecluster.Unheeded:
		l.signal()
	}
}

// signal sends the stop signal once: the channel closed after disconnect,
// disconnect could not be sent, or nodeStopWait passed with the channel open.
func (l *nodeLink) signal() {
	if l.stopDue != nil {
		l.stopDue()
	}
	if l.stopSig != 0 {
		l.s.c.killMode.stop(l.pid, l.stopSig)
		l.stopSig = 0 // a second one would end an app that handles only the first
	}
}

// stopWaited: nodeStopWait passed since the stop began, the channel still open.
func (l *nodeLink) stopWaited() {
	if l.stopSig != 0 {
		l.s.log.Info("node worker still connected after disconnect; sending the stop signal", "slot", l.slot, "pid", l.pid,
			"waited", nodeStopWait(l.s.c.grace), "signal", l.stopSig.String())
		l.signal()
	}
}

func (l *nodeLink) abort() { closeFds([]int{l.master, l.child}) }

func (l *nodeLink) ready() {
	if l.s.rr != nil {
		l.s.rr.Ready(l.pid)
	}
}

// saysReady: a cluster worker reports listening when its server is open
// (README, Node.js: that is when it is up), so --ready-delay alone must not count it
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

// stop sends disconnect (in rr mode once what the worker was handed has
// settled: nodecluster.Worker.Stop), so that Node closes its servers and
// finishes what is in flight; the stop signal follows once the worker closes
// the channel, or nodeStopWait on if it has not.
func (l *nodeLink) stop(sig syscall.Signal) {
	l.drain()
	if l.nw == nil {
		l.s.c.killMode.stop(l.pid, sig)
		return
	}
	if l.stopping {
		return // told already
	}
	l.stopping, l.stopSig = true, sig
	if !l.nw.Stop() { // it never spoke the protocol, or its channel is closed
		l.signal()
		return
	}
	l.stopDue = l.s.env.after(nodeStopWait(l.s.c.grace), nodeStopEvent{l.w, l})
}

func (l *nodeLink) detach() {
	if l.stopDue != nil {
		l.stopDue()
	}
	if l.nw != nil {
		l.nw.Detach()
	}
	if l.s.rr != nil {
		l.s.rr.Detach(l.pid)
	}
}
