//go:build linux || darwin

// This file reads the acks of rr workers (the README's rr handoff protocol):
// 4-byte big-endian sequence numbers, several per message, and closes the
// channel of a worker that sends anything else.
package rr

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/prefork/prefork/internal/rrwire"
)

// readAcks reads the acks waiting on a worker's channel, without
// blocking, until none is left or the channel is closed.
func (d *Dispatcher) readAcks(w *worker) {
	for !w.gone && w.fd >= 0 {
		n, err := w.acks.Recv(w.fd)
		if err == syscall.EAGAIN {
			return
		}
		if err != nil {
			d.handleAcks(w, nil, nil, 0, err)
			return
		}
		for i := 0; i < n && !w.gone; i++ {
			p, oob, flags := w.acks.Msg(i)
			d.handleAcks(w, p, oob, flags, nil)
		}
		if n < w.acks.Cap() {
			// A short batch emptied the queue: no read to learn that again
			// (EAGAIN); the poller is level-triggered and reports what comes next.
			return
		}
	}
}

// handleAcks handles one message read from a worker's channel: acks, end
// of file, or anything else, which breaks the channel.
func (d *Dispatcher) handleAcks(w *worker, p, oob []byte, flags int, err error) {
	if err == syscall.ECONNRESET { // closed with handoffs still unread: a close all the same
		p, err = nil, nil
	}
	switch {
	case err != nil:
		d.breakChannel(w, os.NewSyscallError("recvmsg", err))
		return
	case len(oob) > 0:
		rrwire.CloseRights(oob)
		d.breakChannel(w, errors.New("worker sent a descriptor"))
		return
	case flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0:
		d.breakChannel(w, errors.New("ack message too long"))
		return
	case len(p) == 0:
		// The worker closed its end (it exited, or gave up the channel): what it
		// did not ack can go elsewhere at once. A worker that is not leaving can
		// get no more connections: it is broken, and the supervisor replaces it.
		d.log.Debug("rr: worker closed its handoff channel", "pid", w.id, "unacked", len(w.inflight))
		draining := w.draining
		d.shut(w)
		if !draining && d.onBroken != nil {
			go d.onBroken(w.id, errors.New("it closed its handoff channel"))
		}
		return
	}
	var bad error
	w.seqs, bad = rrwire.ParseAcks(p, w.seqs[:0])
	// Acks before and after a bad one are honoured: the worker took those
	// connections, handing them out again would serve them twice.
	for _, seq := range w.seqs {
		if !d.ack(w, seq) && bad == nil {
			bad = fmt.Errorf("ack for sequence number %d, which is not in flight", seq)
		}
	}
	if bad != nil {
		d.breakChannel(w, bad)
	}
}

// ack closes prefork's copy of a connection the worker took; it reports
// false when seq is not in flight to that worker.
func (d *Dispatcher) ack(w *worker, seq uint32) bool {
	for i := range w.inflight {
		if w.inflight[i].seq == seq {
			d.sys.CloseConn(w.inflight[i].fd)
			w.inflight = append(w.inflight[:i], w.inflight[i+1:]...)
			w.acked++
			d.total.Acked++
			return true
		}
	}
	return false
}

// breakChannel closes a worker's channel for a protocol or I/O error and tells
// the supervisor. Its unacked connections go back to pending.
func (d *Dispatcher) breakChannel(w *worker, err error) {
	if w.gone {
		return
	}
	d.log.Error("rr: closing the handoff channel of a misbehaving worker", "pid", w.id, "err", err)
	d.shut(w)
	if d.onBroken != nil {
		go d.onBroken(w.id, err)
	}
}

// shut closes a worker's channel and queues its unacked connections for
// other workers, ahead of new accepts. The caller pumps.
func (d *Dispatcher) shut(w *worker) {
	if w.gone {
		return
	}
	w.gone = true
	if w.fd >= 0 {
		d.poll.del(w.fd)
		syscall.Close(w.fd)
	}
	d.total.Redistributed += uint64(len(w.inflight))
	for _, h := range w.inflight {
		// The worker's copy shares the open file description with prefork's:
		// a worker that made it non-blocking (Go, libuv, Python's settimeout)
		// before dying would pass that on to the next one, whose blocking
		// read then fails with EAGAIN. The protocol hands connections in blocking mode.
		syscall.SetNonblock(h.fd, d.nonblock)
	}
	d.pending = append(d.pending, w.inflight...)
	w.inflight = nil
}
