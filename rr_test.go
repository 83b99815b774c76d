//go:build unix

// This file tests the rr dispatcher with real listening sockets and real socket
// pairs standing in for workers: the test reads the handoff messages itself.
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pw "github.com/prefork/prefork/worker"
)

// rrGoWorkerEnv makes the test binary play a Go rr worker (see init), as
// startRRWorker runs it.
const rrGoWorkerEnv = "PREFORK_RR_TEST_GO_WORKER"

func init() {
	if os.Getenv(rrGoWorkerEnv) == "1" {
		os.Exit(rrGoWorker())
	}
}

// rrGoWorker serves HTTP on every listener through the worker package.
func rrGoWorker() int {
	time.AfterFunc(60*time.Second, func() { os.Exit(4) }) // watchdog
	ls, err := pw.Listeners()
	if err != nil {
		fmt.Fprintln(os.Stderr, "go rr worker:", err)
		return 3
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from go rr worker %d\n", pw.Slot())
	})}
	for _, l := range ls[1:] {
		go srv.Serve(l)
	}
	srv.Serve(ls[0])
	return 0
}

// rawTCPListener binds a blocking, close-on-exec TCP listener on 127.0.0.1:0 the
// way the supervisor does, closed at the end of the test.
func rawTCPListener(t testing.TB) (fd int, addr string) {
	t.Helper()
	syscall.ForkLock.RLock()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err == nil {
		syscall.CloseOnExec(fd)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 128); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fd, "127.0.0.1:" + strconv.Itoa(sa.(*syscall.SockaddrInet4).Port)
}

// testLogger logs through t; the dispatcher is closed before the test ends.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

type rrBrokenReport struct {
	id  int
	err error
}

// rrFixture is a dispatcher over nl real listeners, and what onBroken reported.
type rrFixture struct {
	t      *testing.T
	d      *dispatcher
	lfds   []int
	addrs  []string
	broken chan rrBrokenReport
}

func newRRFixture(t *testing.T, nl, window int) *rrFixture {
	t.Helper()
	f := &rrFixture{t: t, broken: make(chan rrBrokenReport, 16)}
	for i := 0; i < nl; i++ {
		fd, addr := rawTCPListener(t)
		f.lfds = append(f.lfds, fd)
		f.addrs = append(f.addrs, addr)
	}
	d, err := newDispatcher(f.lfds, window, testLogger(t), func(id int, err error) {
		f.broken <- rrBrokenReport{id, err}
	})
	if err != nil {
		t.Fatal(err)
	}
	f.d = d
	t.Cleanup(d.close)
	return f
}

// rrTestWorker is the worker end of a handoff channel, driven by the test.
type rrTestWorker struct {
	t     *testing.T
	id    int
	fd    int
	conns map[int]bool // descriptors received and not yet closed
}

// worker attaches a new channel under id and returns its worker end, made ready
// unless told otherwise.
func (f *rrFixture) worker(id int, ready bool) *rrTestWorker {
	f.t.Helper()
	master, wfd, err := newHandoffPair()
	if err != nil {
		f.t.Fatal(err)
	}
	w := &rrTestWorker{t: f.t, id: id, fd: wfd, conns: map[int]bool{}}
	f.t.Cleanup(w.close)
	f.d.attach(id, master)
	if ready {
		f.d.ready(id)
	}
	return w
}

// close closes the channel and every connection received, as a dying worker.
func (w *rrTestWorker) close() {
	if w.fd >= 0 {
		syscall.Close(w.fd)
		w.fd = -1
	}
	for fd := range w.conns {
		w.closeConn(fd)
	}
}

// closeConn closes a received connection.
func (w *rrTestWorker) closeConn(fd int) {
	if w.conns[fd] {
		syscall.Close(fd)
		delete(w.conns, fd)
	}
}

// handoffMsg is one message the dispatcher sent.
type handoffMsg struct {
	seq, index uint32
	conn       int
}

// recv waits up to timeout for a handoff; ok is false if none came.
func (w *rrTestWorker) recv(timeout time.Duration) (m handoffMsg, ok bool) {
	w.t.Helper()
	tv := syscall.NsecToTimeval(timeout.Nanoseconds())
	if err := syscall.SetsockoptTimeval(w.fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		w.t.Fatal(err)
	}
	buf := make([]byte, 64)
	oob := make([]byte, syscall.CmsgSpace(4*4))
	n, oobn, flags, _, err := syscall.Recvmsg(w.fd, buf, oob, 0)
	if err == syscall.EAGAIN || err == syscall.EINTR {
		return m, false
	}
	if err != nil {
		w.t.Fatalf("worker %d: recvmsg: %v", w.id, err)
	}
	if flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0 || n != 8 {
		w.t.Fatalf("worker %d: handoff message of %d bytes, flags %#x", w.id, n, flags)
	}
	msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		w.t.Fatalf("worker %d: control messages %v, %v", w.id, msgs, err)
	}
	fds, err := syscall.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		w.t.Fatalf("worker %d: descriptors %v, %v", w.id, fds, err)
	}
	syscall.CloseOnExec(fds[0])
	w.conns[fds[0]] = true
	return handoffMsg{binary.BigEndian.Uint32(buf), binary.BigEndian.Uint32(buf[4:]), fds[0]}, true
}

// must waits for a handoff and fails without one.
func (w *rrTestWorker) must() handoffMsg {
	w.t.Helper()
	m, ok := w.recv(5 * time.Second)
	if !ok {
		w.t.Fatalf("worker %d: no handoff arrived", w.id)
	}
	return m
}

// none checks that no handoff is waiting for this worker.
func (w *rrTestWorker) none() {
	w.t.Helper()
	if m, ok := w.recv(300 * time.Millisecond); ok {
		w.t.Fatalf("worker %d: unexpected handoff seq %d", w.id, m.seq)
	}
}

// send writes one raw message to the dispatcher, with fds in SCM_RIGHTS.
func (w *rrTestWorker) send(p []byte, fds ...int) {
	w.t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = syscall.UnixRights(fds...)
	}
	if err := syscall.Sendmsg(w.fd, p, oob, nil, 0); err != nil {
		w.t.Fatalf("worker %d: sendmsg: %v", w.id, err)
	}
}

// ack acknowledges seqs in one message.
func (w *rrTestWorker) ack(seqs ...uint32) {
	w.t.Helper()
	p := make([]byte, 0, 4*len(seqs))
	for _, s := range seqs {
		p = binary.BigEndian.AppendUint32(p, s)
	}
	w.send(p)
}

// dial connects a client to listener i.
func (f *rrFixture) dial(i int) net.Conn {
	f.t.Helper()
	c, err := net.DialTimeout("tcp", f.addrs[i], 5*time.Second)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { c.Close() })
	return c
}

// sameConn checks that fd, as a worker got it, is the client's connection c:
// a byte written by the client is read through fd, and back.
func sameConn(t *testing.T, c net.Conn, fd int, b byte) {
	t.Helper()
	if _, err := c.Write([]byte{b}); err != nil {
		t.Fatal(err)
	}
	tv := syscall.NsecToTimeval((5 * time.Second).Nanoseconds())
	syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	got := make([]byte, 1)
	if n, err := syscall.Read(fd, got); n != 1 || err != nil || got[0] != b {
		t.Fatalf("read through the handed descriptor: %d %q %v, want %q", n, got[:max(n, 0)], err, b)
	}
	if _, err := syscall.Write(fd, []byte{b + 1}); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || got[0] != b+1 {
		t.Fatalf("client read %q, %v, want %q", got, err, b+1)
	}
}

// stat returns the dispatcher's view of worker id.
func (f *rrFixture) stat(id int) rrWorkerStats {
	f.t.Helper()
	for _, s := range f.d.stats() {
		if s.id == id {
			return s
		}
	}
	f.t.Fatalf("worker %d not in stats", id)
	return rrWorkerStats{}
}

// waitStat polls the stats (acks are handled asynchronously) until ok holds.
func (f *rrFixture) waitStat(id int, what string, ok func(rrWorkerStats) bool) {
	f.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := f.stat(id)
		if ok(s) {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("worker %d: %s never held: %+v", id, what, s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (f *rrFixture) mustBroken(id int) error {
	f.t.Helper()
	select {
	case e := <-f.broken:
		if e.id != id {
			f.t.Fatalf("onBroken(%d, %v), want worker %d", e.id, e.err, id)
		}
		return e.err
	case <-time.After(5 * time.Second):
		f.t.Fatalf("onBroken not called for worker %d", id)
	}
	return nil
}

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
		f.waitStat(w.id, "3 handed and acked", func(s rrWorkerStats) bool {
			return s.handed == 3 && s.acked == 3 && s.inflight == 0
		})
	}
}

func TestRRWindowBackpressure(t *testing.T) {
	const W = 2
	f := newRRFixture(t, 1, W)
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
		f.waitStat(202, "acked", func(s rrWorkerStats) bool { return s.inflight == 0 })
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
	if s := f.stat(201); s.inflight != W || s.handed != W {
		t.Fatalf("worker a: %+v, want %d handed and in flight", s, W)
	}
	if s := f.stat(202); s.inflight != W {
		t.Fatalf("worker b: %+v, want %d in flight", s, W)
	}
	f.d.mu.Lock()
	n := len(f.d.pending)
	f.d.mu.Unlock()
	if n != 0 {
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
	f.waitStat(301, "3 acked", func(s rrWorkerStats) bool { return s.acked == 3 && s.inflight == 2 })
	w.ack(ms[4].seq, ms[3].seq) // 8 bytes, out of order
	f.waitStat(301, "5 acked", func(s rrWorkerStats) bool { return s.acked == 5 && s.inflight == 0 })
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
	f.d.detach(401)
	f.d.detach(401) // a second detach is harmless

	for i := 1; i < 3; i++ {
		m := b.must()
		sameConn(t, cs[i], m.conn, byte('x'+i))
		b.ack(m.seq)
	}
	b.none()
	for _, s := range f.d.stats() {
		if s.id == 401 {
			t.Fatalf("detached worker still listed: %+v", s)
		}
	}
	// the connection a acked before dying stayed a's: prefork closed its copy
	cs[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := cs[0].Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("connection acked by the dead worker: %v, want EOF", err)
	}
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
	select {
	case e := <-f.broken:
		t.Fatalf("onBroken(%d, %v) for a worker that closed its channel", e.id, e.err)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestRRDrain(t *testing.T) {
	f := newRRFixture(t, 1, 4)
	a, b := f.worker(501, true), f.worker(502, true)
	f.dial(0)
	held := a.must()
	f.d.drain(501)
	for i := 0; i < 4; i++ {
		c := f.dial(0)
		m := b.must()
		sameConn(t, c, m.conn, byte('d'+i))
		b.ack(m.seq)
	}
	a.none()
	a.ack(held.seq) // what it held before draining is still its own to ack
	f.waitStat(501, "acked while draining", func(s rrWorkerStats) bool {
		return s.draining && s.acked == 1 && s.inflight == 0 && s.handed == 1
	})
	f.d.ready(501) // ready after drain does not undo it
	f.dial(0)
	b.must()
	a.none()
}

func TestRRNotReadyGetsNothing(t *testing.T) {
	f := newRRFixture(t, 1, 4)
	a := f.worker(551, false)
	c := f.dial(0)
	a.none()
	f.d.ready(551)
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
			f.waitStat(601, "one acked", func(s rrWorkerStats) bool { return s.acked == 1 && s.inflight == 1 })
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
			f.d.detach(601)
			if s := f.d.stats(); len(s) != 1 || s[0].id != 602 || s[0].inflight != 1 {
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
	f.d.detach(801) // nothing else to take it: it waits in pending
	f.d.close()
	f.d.close()
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
	if s := f.d.stats(); len(s) != 0 {
		t.Fatalf("stats after close: %+v", s)
	}
	// attach after close closes the channel
	master, wfd, err := newHandoffPair()
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(wfd)
	f.d.attach(802, master)
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
	if _, err := newDispatcher([]int{fd}, 4, testLogger(t), nil); err == nil {
		t.Fatal("newDispatcher took a UDP socket")
	}
}

func TestSendConnAllocs(t *testing.T) {
	master, wfd, err := newHandoffPair()
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(master)
	defer syscall.Close(wfd)
	n := testing.AllocsPerRun(20, func() {
		if err := sendConn(master, 1, 2, wfd); err != nil {
			t.Fatal(err)
		}
	})
	if n != 0 {
		t.Fatalf("sendConn allocates %v times per call", n)
	}
}

func FuzzAcks(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1})
	f.Add([]byte{0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0})
	f.Add([]byte{1, 2, 3})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		seqs, err := parseAcks(b, nil)
		if len(b) == 0 || len(b)%4 != 0 {
			if err == nil {
				t.Fatalf("%d bytes accepted", len(b))
			}
			return
		}
		if err != nil || len(seqs) != len(b)/4 {
			t.Fatalf("%d bytes: %d acks, %v", len(b), len(seqs), err)
		}
		for i, s := range seqs {
			if s != binary.BigEndian.Uint32(b[4*i:]) {
				t.Fatalf("ack %d: %d", i, s)
			}
		}
	})
}

// startRRWorker runs argv as an rr worker of d, the way the supervisor does:
// the worker end of a new handoff pair as fd 3, PREFORK_MODE=rr, LISTEN_FDNAMES
// with one name per listener and no LISTEN_FDS; it is attached, and made ready
// once the returned function is called (or at once if ready is true). The
// process is killed and detached at the end of the test.
func startRRWorker(t *testing.T, d *dispatcher, names []string, slot int, ready bool, argv ...string) *exec.Cmd {
	t.Helper()
	master, wfd, err := newHandoffPair()
	if err != nil {
		t.Fatal(err)
	}
	wf := os.NewFile(uintptr(wfd), "prefork-rr-worker-end")
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.ExtraFiles = []*os.File{wf}
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(),
		"PREFORK_MODE=rr",
		"LISTEN_FDNAMES="+strings.Join(names, ":"),
		"PREFORK_WORKER="+strconv.Itoa(slot),
		"PREFORK_GENERATION=1",
	)
	err = cmd.Start()
	wf.Close()
	if err != nil {
		syscall.Close(master)
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	d.attach(pid, master)
	if ready {
		d.ready(pid)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		d.detach(pid)
	})
	return cmd
}

// httpGet sends an HTTP/1.0 request over a new connection and returns the body.
func httpGet(t *testing.T, addr string) string {
	t.Helper()
	body, err := httpGetErr(addr)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func httpGetErr(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: test\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		return "", err
	}
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return string(body), nil
}

func TestRRPythonWorker(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	f := newRRFixture(t, 1, 4)
	script, _ := filepath.Abs("examples/rr_worker.py")
	startRRWorker(t, f.d, []string{"http"}, 0, true, py, script)
	startRRWorker(t, f.d, []string{"http"}, 1, true, py, script)
	got := map[string]int{}
	for i := 0; i < 10; i++ {
		got[httpGet(t, f.addrs[0])]++
	}
	want := map[string]int{"hello from python rr worker 0\n": 5, "hello from python rr worker 1\n": 5}
	if len(got) != len(want) {
		t.Fatalf("bodies %q, want %q", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("bodies %q, want %q", got, want)
		}
	}
	// The ack left the worker before its answer, but prefork may read it a moment later.
	deadline := time.Now().Add(5 * time.Second)
	for _, s := range f.d.stats() {
		for s.acked != 5 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
			for _, s2 := range f.d.stats() {
				if s2.id == s.id {
					s = s2
				}
			}
		}
		if s.handed != 5 || s.acked != 5 {
			t.Fatalf("worker stats %+v, want 5 handed and acked", s)
		}
	}
}

func TestRRGoWorkerAndCrash(t *testing.T) {
	const W = 4
	f := newRRFixture(t, 2, W)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// a stuck worker: holds fd 3, never reads it
	stuck := startRRWorker(t, f.d, []string{"a", "b"}, 0, true, "/bin/sleep", "60")
	t.Setenv(rrGoWorkerEnv, "1")
	startRRWorker(t, f.d, []string{"a", "b"}, 1, true, self)
	os.Unsetenv(rrGoWorkerEnv)

	const n = 12
	bodies := make(chan string, n)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			body, err := httpGetErr(f.addrs[i%2])
			if err != nil {
				errs <- err
				return
			}
			bodies <- body
		}()
	}
	f.waitStat(stuck.Process.Pid, "full", func(s rrWorkerStats) bool { return s.inflight == W })
	// The stuck worker dies holding W unacked connections: they go to the Go worker.
	stuck.Process.Kill()
	stuck.Wait()
	f.d.detach(stuck.Process.Pid)
	for i := 0; i < n; i++ {
		select {
		case b := <-bodies:
			if b != "hello from go rr worker 1\n" {
				t.Fatalf("answer %q", b)
			}
		case err := <-errs:
			t.Fatalf("request lost: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatalf("%d of %d requests answered", i, n)
		}
	}
	s := f.d.stats()
	if len(s) != 1 || s[0].handed != n || s[0].acked != n || s[0].inflight != 0 {
		t.Fatalf("stats %+v, want the Go worker alone with %d handed and acked", s, n)
	}
}

// churn sends b.N HTTP/1.0 requests to addr, one new connection each, from 32
// clients at once.
func churn(b *testing.B, addr string) {
	const clients = 32
	work := make(chan struct{}, b.N)
	for i := 0; i < b.N; i++ {
		work <- struct{}{}
	}
	close(work)
	errs := make(chan error, clients)
	b.ResetTimer()
	for i := 0; i < clients; i++ {
		go func() {
			for range work {
				if _, err := httpGetErr(addr); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for i := 0; i < clients; i++ {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
}

// startGoWorkers runs n Go workers (the test binary) for churn benchmarks.
func startGoWorkers(b *testing.B, n int, start func(i int) *exec.Cmd) {
	for i := 0; i < n; i++ {
		cmd := start(i)
		b.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
		})
	}
	time.Sleep(300 * time.Millisecond) // let them reach Accept
}

// BenchmarkChurnShared is the baseline for BenchmarkChurnRR: two Go workers
// share the listener (--mode shared), the kernel spreads connections.
func BenchmarkChurnShared(b *testing.B) {
	lfd, addr := rawTCPListener(b)
	self, _ := os.Executable()
	dup, err := dupCloexec(lfd) // the os.File owns (and may finalize) the duplicate
	if err != nil {
		b.Fatal(err)
	}
	lf := os.NewFile(uintptr(dup), "listener")
	defer lf.Close()
	startGoWorkers(b, 2, func(i int) *exec.Cmd {
		cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`, self)
		cmd.ExtraFiles = []*os.File{lf}
		cmd.Env = append(os.Environ(), rrGoWorkerEnv+"=1", "LISTEN_FDS=1", "LISTEN_FDNAMES=l", "PREFORK_WORKER="+strconv.Itoa(i))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		return cmd
	})
	churn(b, addr)
}

// BenchmarkChurnRR: the same two Go workers behind the dispatcher (--mode rr).
func BenchmarkChurnRR(b *testing.B) {
	lfd, addr := rawTCPListener(b)
	d, err := newDispatcher([]int{lfd}, rrDefaultWindow, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(d.close)
	self, _ := os.Executable()
	startGoWorkers(b, 2, func(i int) *exec.Cmd {
		master, wfd, err := newHandoffPair()
		if err != nil {
			b.Fatal(err)
		}
		wf := os.NewFile(uintptr(wfd), "handoff")
		cmd := exec.Command(self)
		cmd.ExtraFiles = []*os.File{wf}
		cmd.Env = append(os.Environ(), rrGoWorkerEnv+"=1", "PREFORK_MODE=rr", "LISTEN_FDNAMES=l", "PREFORK_WORKER="+strconv.Itoa(i))
		cmd.Stderr = os.Stderr
		err = cmd.Start()
		wf.Close()
		if err != nil {
			b.Fatal(err)
		}
		d.attach(cmd.Process.Pid, master)
		d.ready(cmd.Process.Pid)
		b.Cleanup(func() { d.detach(cmd.Process.Pid) })
		return cmd
	})
	churn(b, addr)
}
