//go:build linux || darwin

// This file holds the dispatcher's queue: the messages every call becomes,
// the public calls that post them, and the loop's side that carries them out
// and answers the snapshots.
package rr

import (
	"errors"
	"fmt"
	"syscall"
)

// msg is one call into the loop; reply is set for those that wait.
type msg struct {
	op     op
	id, fd int
	seq    uint32
	ok     bool
	send   Sender
	reply  chan reply
}

type op uint8

const (
	opAttach op = iota
	opAck
	opShut
	opReady
	opDrain
	opDetach
	opKick
	opNonblock
	opSlot
	opSlots
	opAddListener
	opRemoveListener
	opStats
	opTotals
	opWaiting
	opClose
)

type reply struct {
	n      int
	seq    uint32
	err    error
	stats  []WorkerStats
	totals Totals
}

// queueLen bounds the queue; a caller finding it full waits for the loop.
const queueLen = 1024

// post queues m for the loop and wakes it unless a message queued before
// did; it reports false once the loop has returned.
func (d *Dispatcher) post(m msg) bool {
	select {
	case <-d.done:
		return false
	default:
	}
	select {
	case d.q <- m:
	case <-d.done:
		return false
	}
	if d.woken.CompareAndSwap(false, true) {
		d.poll.wake()
	}
	return true
}

// call posts m and waits for the loop's reply; once the dispatcher is closed
// the reply is read from the state the loop left.
func (d *Dispatcher) call(m msg) reply {
	m.reply = make(chan reply, 1)
	if d.post(m) {
		select {
		case r := <-m.reply:
			return r
		case <-d.finished:
		}
	} else {
		<-d.finished
	}
	return d.answer(m)
}

// Attach takes ownership of the master end of a new worker's handoff socket,
// reads its acks from now on and sends it connections through s. fd < 0 is a
// channel read elsewhere (the Node cluster channel): its acks come through
// Ack, its end through Shut. The worker gets no connection before Ready.
func (d *Dispatcher) Attach(id int, s Sender, fd int) {
	if !d.post(msg{op: opAttach, id: id, fd: fd, send: s}) && fd >= 0 {
		syscall.Close(fd)
	}
}

// Ack takes a worker's answer to a connection from a channel read
// elsewhere: accepted (prefork's copy is closed), or refused (it goes to
// another worker).
func (d *Dispatcher) Ack(id int, seq uint32, accepted bool) {
	d.post(msg{op: opAck, id: id, seq: seq, ok: accepted})
}

// Shut closes a channel read elsewhere: what the worker did not ack goes to
// another worker.
func (d *Dispatcher) Shut(id int) { d.post(msg{op: opShut, id: id}) }

// Ready makes a worker eligible for connections.
func (d *Dispatcher) Ready(id int) { d.post(msg{op: opReady, id: id}) }

// Drain stops handing connections to a worker that is about to stop. What it
// already holds stays its own until it acks or dies.
func (d *Dispatcher) Drain(id int) { d.post(msg{op: opDrain, id: id}) }

// Detach forgets a worker whose process is gone: acks it sent before it died
// are read first, so that a connection it took is not served twice; every
// connection it had not acked goes to another worker.
func (d *Dispatcher) Detach(id int) { d.post(msg{op: opDetach, id: id}) }

// SetSlot tells which slot a worker serves, for the Balancer (Source).
func (d *Dispatcher) SetSlot(id, slot int) { d.post(msg{op: opSlot, id: id, fd: slot}) }

// SetSlots tells how many slots there are, for the Balancer (Source).
func (d *Dispatcher) SetSlots(n int) { d.post(msg{op: opSlots, fd: n}) }

// Kick makes the dispatcher look again for workers that can take what it
// holds or could accept (a Node worker now has a server on a listener).
func (d *Dispatcher) Kick() { d.post(msg{op: opKick}) }

// SetNonblockConns makes the connections the dispatcher accepts non-blocking
// from now on, as Node workers need them.
func (d *Dispatcher) SetNonblockConns() { d.post(msg{op: opNonblock}) }

// AddListener accepts on one more listener from now on (a socket bound for a
// Node worker's listen()) and returns its index.
func (d *Dispatcher) AddListener(lfd int) (uint32, error) {
	r := d.call(msg{op: opAddListener, fd: lfd})
	return r.seq, r.err
}

// RemoveListener stops accepting on a listener AddListener added (its worker
// servers are gone) and closes the connections from it that no worker has
// taken; the caller closes its own descriptor.
func (d *Dispatcher) RemoveListener(index uint32) { d.post(msg{op: opRemoveListener, seq: index}) }

// Stats reports every attached worker.
func (d *Dispatcher) Stats() []WorkerStats { return d.call(msg{op: opStats}).stats }

// Totals reports the counts over the dispatcher's life.
func (d *Dispatcher) Totals() Totals { return d.call(msg{op: opTotals}).totals }

// Waiting returns how many connections prefork holds that no worker has taken
// yet: the pending ones, and those handed to a worker before mark (the
// sequence number the previous call returned) and still not acked. An ack
// means the worker took the connection, so these have waited at least since
// the previous call; what was handed since, and is in transit, is not counted.
// The pool reads it every tick.
func (d *Dispatcher) Waiting(mark uint32) (n int, next uint32) {
	r := d.call(msg{op: opWaiting, seq: mark})
	return r.n, r.seq
}

// handle carries out one message on the loop; it reports true for close.
func (d *Dispatcher) handle(m msg) bool {
	switch m.op {
	case opAttach:
		d.attach(m.id, m.send, m.fd)
	case opAck:
		if w := d.worker(m.id); w != nil {
			if !m.ok {
				d.refuse(w, m.seq)
			} else if !d.ack(w, m.seq) {
				d.log.Debug("node: ack from a worker", "pid", m.id,
					"err", fmt.Errorf("ack for sequence number %d, which is not in flight", m.seq))
			}
			d.pump()
		}
	case opShut:
		if w := d.worker(m.id); w != nil {
			d.shut(w)
			d.pump()
		}
	case opReady:
		if w := d.worker(m.id); w != nil && !w.draining {
			w.ready = true
			d.pump()
		}
	case opDrain:
		if w := d.worker(m.id); w != nil {
			w.draining = true
		}
	case opDetach:
		d.detach(m.id)
	case opKick:
		d.pump()
	case opRemoveListener:
		d.removeListener(m.seq)
	case opNonblock:
		d.nonblock = true
	case opSlot:
		if w := d.worker(m.id); w != nil {
			w.slot = m.fd
			d.pump()
		}
	case opSlots:
		d.slots = m.fd
		d.pump()
	case opClose:
		d.close()
		return true
	default:
		m.reply <- d.answer(m)
	}
	return false
}

// answer is the reply to a request: on the loop, or on any goroutine once
// the dispatcher is closed (AddListener changes nothing then).
func (d *Dispatcher) answer(m msg) reply {
	switch m.op {
	case opAddListener:
		if d.closed {
			return reply{err: errors.New("prefork: rr dispatcher closed")}
		}
		l, err := d.newListener(uint32(len(d.listeners)), m.fd)
		if err != nil {
			return reply{err: err}
		}
		d.listeners = append(d.listeners, l)
		return reply{seq: l.index}
	case opStats:
		s := make([]WorkerStats, 0, len(d.workers))
		for _, w := range d.workers {
			s = append(s, WorkerStats{ID: w.id, Slot: w.slot, Handed: w.handed, Acked: w.acked,
				Inflight: len(w.inflight), Ready: w.ready, Draining: w.draining, Unread: w.stuck})
		}
		return reply{stats: s}
	case opTotals:
		t := d.total
		t.Pending = len(d.pending)
		return reply{totals: t}
	case opWaiting:
		n := len(d.pending)
		for _, w := range d.workers {
			for _, h := range w.inflight {
				if int32(m.seq-h.seq) > 0 {
					n++
				}
			}
		}
		return reply{n: n, seq: d.seq}
	}
	return reply{}
}
