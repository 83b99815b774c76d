//go:build linux || darwin

// This file tests the dispatcher with real listening sockets and real socket
// pairs standing in for workers: the test reads the handoff messages itself.
package rr

import (
	"encoding/binary"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/prefork/prefork/internal/rrwire"
)

func TestRRRoundRobin(t *testing.T) {
	f := newRRFixture(t, 1, 4)
	ws := []*rrTestWorker{f.worker(101, true), f.worker(102, true), f.worker(103, true)}
	seen := map[uint32]bool{}
	for i := 0; i < 9; i++ {
		c := f.dial(0)
		w := ws[i%3]
		m := w.must()
		if m.index != 0 || seen[m.seq] {
			t.Fatalf("handoff %d: index %d, seq %d (seen before: %v)", i, m.index, m.seq, seen[m.seq])
		}
		seen[m.seq] = true
		sameConn(t, c, m.conn, byte('a'+i))
		w.ack(m.seq)
	}
	for _, w := range ws {
		w.none()
		f.waitStat(w.id, "3 handed and acked", func(s WorkerStats) bool {
			return s.Handed == 3 && s.Acked == 3 && s.Inflight == 0
		})
	}
}

func TestRRWindowBackpressure(t *testing.T) {
	const W = 2
	f := newRRFixtureWith(t, 1, Config{Window: W, Balancer: &RoundRobin{}})
	a, b := f.worker(201, true), f.worker(202, true)

	// a never acks: it gets exactly W, b (acking) gets the rest.
	var got []int
	for i := 0; i < 6; i++ {
		f.dial(0)
		if _, ok := a.recv(200 * time.Millisecond); ok {
			got = append(got, 201)
			continue
		}
		m := b.must()
		got = append(got, 202)
		b.ack(m.seq)
		f.waitStat(202, "acked", func(s WorkerStats) bool { return s.Inflight == 0 })
	}
	want := []int{201, 202, 201, 202, 202, 202}
	if !equalInts(got, want) {
		t.Fatalf("handoffs went to %v, want %v", got, want)
	}

	// Now b stops acking too: it fills up, and then nothing is accepted.
	var held []handoffMsg
	for i := 0; i < W; i++ {
		f.dial(0)
		held = append(held, b.must())
	}
	c := f.dial(0) // the connect succeeds: the kernel queue holds it
	a.none()
	b.none()
	if s := f.stat(201); s.Inflight != W || s.Handed != W {
		t.Fatalf("worker a: %+v, want %d handed and in flight", s, W)
	}
	if s := f.stat(202); s.Inflight != W {
		t.Fatalf("worker b: %+v, want %d in flight", s, W)
	}
	if n := f.d.Totals().Pending; n != 0 {
		t.Fatalf("%d connections accepted and held while every worker was full", n)
	}

	// One ack frees one place: the queued client goes to b.
	b.ack(held[0].seq)
	m := b.must()
	sameConn(t, c, m.conn, 'q')
	a.none()
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestRRCoalescedAcks(t *testing.T) {
	f := newRRFixture(t, 1, 8)
	w := f.worker(301, true)
	var cs []net.Conn
	var ms []handoffMsg
	for i := 0; i < 5; i++ {
		cs = append(cs, f.dial(0))
		ms = append(ms, w.must())
	}
	// Before the ack prefork holds its copy: closing the worker's descriptor does
	// not end the connection. (After the ack, the same close does: below.)
	w.ack(ms[0].seq, ms[1].seq, ms[2].seq) // 12 bytes
	f.waitStat(301, "3 acked", func(s WorkerStats) bool { return s.Acked == 3 && s.Inflight == 2 })
	w.ack(ms[4].seq, ms[3].seq) // 8 bytes, out of order
	f.waitStat(301, "5 acked", func(s WorkerStats) bool { return s.Acked == 5 && s.Inflight == 0 })
	for i, m := range ms {
		sameConn(t, cs[i], m.conn, byte('0'+i))
		// prefork closed its copy on the ack: the worker's close ends the connection.
		w.closeConn(m.conn)
		cs[i].SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := cs[i].Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("client %d after the worker closed: %d, %v, want EOF", i, n, err)
		}
	}
	select {
	case e := <-f.broken:
		t.Fatalf("onBroken(%d, %v) for valid acks", e.id, e.err)
	default:
	}
}

func TestRRDetachRedistributes(t *testing.T) {
	f := newRRFixture(t, 1, 4)
	a := f.worker(401, true)
	var cs []net.Conn
	var ms []handoffMsg
	for i := 0; i < 3; i++ {
		cs = append(cs, f.dial(0))
		ms = append(ms, a.must())
	}
	a.ack(ms[0].seq) // taken: must not be handed out again
	b := f.worker(402, true)
	a.close() // the worker dies with two unacked connections
	f.d.Detach(401)
	f.d.Detach(401) // a second detach is harmless

	for i := 1; i < 3; i++ {
		m := b.must()
		sameConn(t, cs[i], m.conn, byte('x'+i))
		b.ack(m.seq)
	}
	b.none()
	for _, s := range f.d.Stats() {
		if s.ID == 401 {
			t.Fatalf("detached worker still listed: %+v", s)
		}
	}
	// the connection a acked before dying stayed a's: prefork closed its copy
	cs[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := cs[0].Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("connection acked by the dead worker: %v, want EOF", err)
	}
}

// A worker that made a connection non-blocking (as Go, libuv and Python's
// settimeout do) and died before acking must not pass that on: the next worker
// gets it in blocking mode, as the rr handoff protocol says, and its plain read waits for data.
func TestRRRedistributedConnIsBlocking(t *testing.T) {
	f := newRRFixture(t, 1, 4)
	a := f.worker(471, true)
	c := f.dial(0)
	m := a.must()
	if err := syscall.SetNonblock(m.conn, true); err != nil {
		t.Fatal(err)
	}
	b := f.worker(472, true)
	a.close()
	f.d.Detach(471)
	m = b.must()
	if fl, err := fcntl(m.conn, syscall.F_GETFL, 0); err != nil || fl&syscall.O_NONBLOCK != 0 {
		t.Fatalf("redistributed connection: flags %#x, %v; want blocking", fl, err)
	}
	sameConn(t, c, m.conn, 'n')
}

func TestRRWorkerClosesChannel(t *testing.T) {
	f := newRRFixture(t, 1, 4)
	a := f.worker(451, true)
	c := f.dial(0)
	a.must()
	b := f.worker(452, true)
	a.close() // no detach: the end of file alone hands the connection on
	m := b.must()
	sameConn(t, c, m.conn, 'e')
	// A worker that is not draining and closes its channel can get no more
	// connections: it is broken, so that the supervisor replaces it.
	select {
	case e := <-f.broken:
		if e.id != 451 {
			t.Fatalf("onBroken(%d, %v), want worker 451", e.id, e.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no onBroken for a worker that closed its channel while not draining")
	}
}

func TestRRDrainingWorkerClosesChannel(t *testing.T) {
	f := newRRFixture(t, 1, 4)
	a := f.worker(461, true)
	f.d.Drain(461)
	a.close()
	select {
	case e := <-f.broken:
		t.Fatalf("onBroken(%d, %v) for a draining worker that closed its channel", e.id, e.err)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestRRDrain(t *testing.T) {
	f := newRRFixture(t, 1, 4)
	a, b := f.worker(501, true), f.worker(502, true)
	f.dial(0)
	held := a.must()
	f.d.Drain(501)
	for i := 0; i < 4; i++ {
		c := f.dial(0)
		m := b.must()
		sameConn(t, c, m.conn, byte('d'+i))
		b.ack(m.seq)
	}
	a.none()
	a.ack(held.seq) // what it held before draining is still its own to ack
	f.waitStat(501, "acked while draining", func(s WorkerStats) bool {
		return s.Draining && s.Acked == 1 && s.Inflight == 0 && s.Handed == 1
	})
	f.d.Ready(501) // ready after drain does not undo it
	f.dial(0)
	b.must()
	a.none()
}

func TestRRNotReadyGetsNothing(t *testing.T) {
	f := newRRFixture(t, 1, 4)
	a := f.worker(551, false)
	c := f.dial(0)
	a.none()
	f.d.Ready(551)
	m := a.must()
	sameConn(t, c, m.conn, 'r')
}

func TestRRGarbage(t *testing.T) {
	pipeFD := func(t *testing.T) int {
		var p [2]int
		if err := syscall.Pipe(p[:]); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Close(p[0]); syscall.Close(p[1]) })
		return p[0]
	}
	// Worker a holds m unacked and has acked m2; then it sends garbage.
	cases := []struct {
		name string
		send func(t *testing.T, a *rrTestWorker, m, m2 handoffMsg)
	}{
		{"3 bytes", func(t *testing.T, a *rrTestWorker, m, m2 handoffMsg) { a.send([]byte{0, 0, 0}) }},
		{"6 bytes", func(t *testing.T, a *rrTestWorker, m, m2 handoffMsg) { a.send([]byte{0, 0, 0, 0, 0, 0}) }},
		{"unknown seq", func(t *testing.T, a *rrTestWorker, m, m2 handoffMsg) { a.ack(m.seq + 1000) }},
		{"acked twice", func(t *testing.T, a *rrTestWorker, m, m2 handoffMsg) { a.ack(m2.seq) }},
		{"descriptor", func(t *testing.T, a *rrTestWorker, m, m2 handoffMsg) {
			a.send(binary.BigEndian.AppendUint32(nil, m.seq), pipeFD(t))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newRRFixture(t, 1, 4)
			a := f.worker(601, true)
			c := f.dial(0)
			m := a.must()
			f.dial(0)
			m2 := a.must()
			a.ack(m2.seq)
			f.waitStat(601, "one acked", func(s WorkerStats) bool { return s.Acked == 1 && s.Inflight == 1 })
			b := f.worker(602, true)
			tc.send(t, a, m, m2)
			t.Logf("onBroken: %v", f.mustBroken(601))
			// the channel is closed: the worker end reads end of file
			if n, oobn, _, _, err := syscall.Recvmsg(a.fd, make([]byte, 16), make([]byte, 64), 0); n != 0 || oobn != 0 || err != nil {
				t.Fatalf("worker end after the break: %d bytes, %d of control, %v; want end of file", n, oobn, err)
			}
			// no connection lost: the unacked one goes to b
			mb := b.must()
			sameConn(t, c, mb.conn, 'g')
			b.none()
			f.d.Detach(601)
			if s := f.d.Stats(); len(s) != 1 || s[0].ID != 602 || s[0].Inflight != 1 {
				t.Fatalf("stats after detach: %+v", s)
			}
		})
	}
}

func TestRRMultipleListeners(t *testing.T) {
	f := newRRFixture(t, 3, 4)
	w := f.worker(701, true)
	for _, i := range []int{2, 0, 1, 2} {
		c := f.dial(i)
		m := w.must()
		if m.index != uint32(i) {
			t.Fatalf("connection to listener %d handed with index %d", i, m.index)
		}
		sameConn(t, c, m.conn, byte('A'+i))
		w.ack(m.seq)
	}
}

func TestRRClose(t *testing.T) {
	f := newRRFixture(t, 2, 4)
	a := f.worker(801, true)
	c := f.dial(0)
	a.must()
	a.close()
	f.d.Detach(801) // nothing else to take it: it waits in pending
	f.d.Close()
	f.d.Close()
	// prefork's copy of the pending connection is closed
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("pending connection after close: %v, want EOF", err)
	}
	// the supervisor's listeners stay open
	for _, lfd := range f.lfds {
		if _, err := syscall.GetsockoptInt(lfd, syscall.SOL_SOCKET, syscall.SO_TYPE); err != nil {
			t.Fatalf("listener %d closed by the dispatcher: %v", lfd, err)
		}
	}
	if s := f.d.Stats(); len(s) != 0 {
		t.Fatalf("stats after close: %+v", s)
	}
	// attach after close closes the channel
	master, wfd, err := rrwire.NewPair()
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(wfd)
	f.d.Attach(802, sockSender(master), master)
	if n, _, _, _, err := syscall.Recvmsg(wfd, make([]byte, 8), nil, 0); n != 0 || err != nil {
		t.Fatalf("channel attached after close: %d, %v, want EOF", n, err)
	}
}

func TestRRRejectsDatagramListener(t *testing.T) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if _, err := New([]int{fd}, Config{Window: 4, Log: testLogger(t), Sys: testSys}); err == nil {
		t.Fatal("New took a UDP socket")
	}
}

// Issue 18.6: a refused connection goes to another worker at once, not back
// to the one that refused it; when each has refused it, it is offered again
// only after a backoff, so that workers that all refuse cost no spin.
func TestRRRefusedBackoff(t *testing.T) {
	f := newRRFixture(t, 1, 4)
	a, b := f.worker(201, true), f.worker(202, true)
	c := f.dial(0)
	defer c.Close()
	m := a.must()
	f.d.Ack(a.id, m.seq, false)
	a.closeConn(m.conn)
	m = b.must() // at once, and not to a
	a.none()
	start := time.Now()
	f.d.Ack(b.id, m.seq, false)
	b.closeConn(m.conn)
	m = a.must() // b refused last: a, after the backoff
	if d := time.Since(start); d < retryMin {
		t.Errorf("offered again %v after the second refusal, want a backoff of at least %v", d, retryMin)
	}
	f.d.Ack(a.id, m.seq, false)
	a.closeConn(m.conn)
	var offers int
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
		for _, w := range []*rrTestWorker{a, b} {
			if m, ok := w.recv(20 * time.Millisecond); ok {
				offers++
				f.d.Ack(w.id, m.seq, false)
				w.closeConn(m.conn)
			}
		}
	}
	if offers == 0 || offers > 10 {
		t.Errorf("offered %d times in a second while every worker refused it", offers)
	}
	b.none()
}
