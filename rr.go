//go:build linux || darwin

// This file holds the supervisor's side of --mode rr: the worker channel (a
// handoff socket per worker), the sender of the README's rr handoff protocol,
// and the dispatcher's figures for the status and the metrics.
//
// Design. The dispatcher (internal/rr) accepts on prefork's listeners and
// hands each connection to a ready worker, keeping its own copy until the
// worker acks it. It runs on one goroutine locked to its thread, in a blocking
// epoll_wait (kqueue on macOS) over every listener and every worker's channel,
// and owns all of its state: in one wake-up it reads the acks that came in,
// accepts (raw accept4 until EAGAIN or no room) and sends each connection to
// the worker its Balancer picks (round robin: the next ready one in turn). No
// Go poller, no goroutine or channel per connection, no wake-up of the
// supervisor. Nobody else touches that state, and nothing is locked: the
// supervisor's calls (attach, ready, drain, detach, close), the Node readers'
// acks and the snapshots of the status, the metrics and the pool are messages
// on the dispatcher's queue, which wakes its thread once per batch. While no
// connection could be placed the listeners are off in the poller, so a burst
// waits in the kernel's accept queue. The descriptor handling is the
// platform's, in fdpass_*.go, given to the dispatcher at its start (rrSys).
package main

import (
	"fmt"
	"log/slog"
	"syscall"
	"time"

	"github.com/prefork/prefork/internal/rr"
	"github.com/prefork/prefork/internal/rrwire"
	"github.com/prefork/prefork/internal/sock"
)

// rrDefaultWindow is the default W: connections a worker may hold unacked.
const rrDefaultWindow = 32

// rrSys is this platform's accept, close and dup for the dispatcher (fdpass_*.go).
var rrSys = rr.Sys{Accept: acceptConn, AcceptNonblock: acceptConnNonblock, CloseConn: closeConn, Dup: dupCloexec}

// newDispatcher starts the rr dispatcher on prefork's listeners lfds, with W =
// window. onBroken is called on a goroutine of its own when a worker's channel
// is closed for a protocol or I/O error; the supervisor kills that worker.
// bal is the --balance policy (nil: least); a connection source holds back
// for its slot's restarting worker waits up to wait.
func newDispatcher(lfds []int, window int, log *slog.Logger, onBroken func(id int, err error), bal rr.Balancer, wait time.Duration) (*rr.Dispatcher, error) {
	return rr.New(lfds, rr.Config{Window: window, Log: log, Sys: rrSys, OnBroken: onBroken, Balancer: bal, Wait: wait})
}

// rrBalancer is the dispatcher's policy for --balance.
func rrBalancer(b balance) rr.Balancer {
	switch b {
	case balanceRoundRobin:
		return &rr.RoundRobin{}
	case balanceSource:
		return &rr.Source{}
	}
	return &rr.Least{}
}

// balanceSlots tells the policy that there are n slots: the rr dispatcher,
// and with --balance source in reuseport mode the kernel, whose program on
// each listener's group picks socket key % n (internal/sock). reload.go keeps
// the slots' sockets in their group in slot order.
func (s *supervisor) balanceSlots(n int) error {
	if s.rr != nil {
		s.rr.SetSlots(n)
	}
	if s.c.mode != modeReuseport || !s.c.balanceSet || s.c.balance != balanceSource {
		return nil
	}
	for _, l := range s.listeners {
		if err := sock.AttachSourceBalance(l.FD, n); err != nil {
			return fmt.Errorf("--balance source on %s: %w", l.Bound(), err)
		}
	}
	return nil
}

// balanceName is the policy as the status shows it: --balance in rr mode,
// "source" or the kernel's "hash" in reuseport mode, none in shared mode.
func (s *supervisor) balanceName() string {
	switch {
	case s.c.mode == modeRR || s.c.balanceSet:
		return s.c.balance.String()
	case s.c.mode == modeReuseport:
		return "hash"
	}
	return ""
}

// handoffSender is the protocol's sender on prefork's end of a handoff socket:
// one message, the connection in SCM_RIGHTS.
type handoffSender int

func (fd handoffSender) SendConn(seq, index uint32, conn int) error {
	return rrwire.Send(int(fd), seq, index, conn)
}

// handoffChannel is rr mode: fd 3 is the worker's end of a handoff socket
// pair; the dispatcher owns prefork's end.
type handoffChannel struct{ s *supervisor }

func (c handoffChannel) prepare(sl *slot) ([]int, []string, link, error) {
	master, worker, err := rrwire.NewPair()
	if err != nil {
		return nil, nil, nil, err
	}
	return []int{worker}, nil, &handoffLink{d: c.s.rr, master: master, worker: worker, slot: sl.index, killMode: c.s.c.killMode}, nil
}

// handoffLink is one rr worker as the dispatcher knows it.
type handoffLink struct {
	d              *rr.Dispatcher
	master, worker int // socket pair ends; worker is closed once the process has it
	pid            int
	slot           int      // its slot's index, for --balance source
	killMode       killMode // where the stop signal goes
}

func (l *handoffLink) attach(w *worker) {
	l.pid = w.pid
	syscall.Close(l.worker)
	l.d.Attach(w.pid, handoffSender(l.master), l.master)
	l.d.SetSlot(w.pid, l.slot)
}

func (l *handoffLink) abort()          { closeFds([]int{l.master, l.worker}) }
func (l *handoffLink) ready()          { l.d.Ready(l.pid) }
func (l *handoffLink) saysReady() bool { return false }
func (l *handoffLink) drain()          { l.d.Drain(l.pid) }

func (l *handoffLink) stop(sig syscall.Signal) {
	l.d.Drain(l.pid)
	l.killMode.stop(l.pid, sig)
}

func (l *handoffLink) detach() { l.d.Detach(l.pid) }
