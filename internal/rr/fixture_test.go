//go:build linux || darwin

// This file holds the dispatcher's test fixture: a real listening socket and
// real socket pairs as worker channels, driven by the test the way a worker would,
// and a portable Sys (prefork's own is tested with real workers at the top).
package rr

import (
	"encoding/binary"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/prefork/prefork/internal/rrwire"
	"github.com/prefork/prefork/internal/testfd"
)

type rrBrokenReport struct {
	id  int
	err error
}

// rrFixture is a dispatcher over nl real listeners, and what onBroken reported.
type rrFixture struct {
	t      *testing.T
	d      *Dispatcher
	lfds   []int
	addrs  []string
	broken chan rrBrokenReport
}

func newRRFixture(t *testing.T, nl, window int) *rrFixture {
	t.Helper()
	return newRRFixtureWith(t, nl, Config{Window: window})
}

// newRRFixtureWith is newRRFixture with c's Window, Balancer and Wait.
func newRRFixtureWith(t *testing.T, nl int, c Config) *rrFixture {
	t.Helper()
	window := c.Window
	f := &rrFixture{t: t, broken: make(chan rrBrokenReport, 16)}
	for i := 0; i < nl; i++ {
		fd, addr := rawTCPListener(t)
		f.lfds = append(f.lfds, fd)
		f.addrs = append(f.addrs, addr)
	}
	d, err := New(f.lfds, Config{Window: window, Balancer: c.Balancer, Wait: c.Wait, Log: testLogger(t), Sys: testSys, OnBroken: func(id int, err error) {
		f.broken <- rrBrokenReport{id, err}
	}})
	if err != nil {
		t.Fatal(err)
	}
	f.d = d
	t.Cleanup(d.Close)
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
	master, wfd, err := rrwire.NewPair()
	if err != nil {
		f.t.Fatal(err)
	}
	w := &rrTestWorker{t: f.t, id: id, fd: wfd, conns: map[int]bool{}}
	f.t.Cleanup(w.close)
	f.d.Attach(id, sockSender(master), master)
	if ready {
		f.d.Ready(id)
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
	n, err := syscall.Read(fd, got)
	for err == syscall.EINTR { // not restarted under SO_RCVTIMEO
		n, err = syscall.Read(fd, got)
	}
	if n != 1 || err != nil || got[0] != b {
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
func (f *rrFixture) stat(id int) WorkerStats {
	f.t.Helper()
	for _, s := range f.d.Stats() {
		if s.ID == id {
			return s
		}
	}
	f.t.Fatalf("worker %d not in stats", id)
	return WorkerStats{}
}

// waitStat polls the stats (acks are handled asynchronously) until ok holds.
func (f *rrFixture) waitStat(id int, what string, ok func(WorkerStats) bool) {
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

// sockSender sends on a handoff socket, as prefork's handoffSender does.
type sockSender int

func (fd sockSender) SendConn(seq, index uint32, conn int) error {
	return rrwire.Send(int(fd), seq, index, conn)
}

// testSys is a portable Sys: accept and dup close-on-exec under ForkLock.
var testSys = Sys{
	Accept:         func(lfd int) (int, error) { return testAccept(lfd, false) },
	AcceptNonblock: func(lfd int) (int, error) { return testAccept(lfd, true) },
	CloseConn:      func(fd int) { syscall.Close(fd) },
	Dup: func(fd int) (int, error) {
		syscall.ForkLock.RLock()
		defer syscall.ForkLock.RUnlock()
		nfd, err := syscall.Dup(fd)
		if err == nil {
			syscall.CloseOnExec(nfd)
		}
		return nfd, err
	},
}

func testAccept(lfd int, nonblock bool) (int, error) {
	for {
		syscall.ForkLock.RLock()
		fd, _, err := syscall.Accept(lfd)
		if err == nil {
			syscall.CloseOnExec(fd)
		}
		syscall.ForkLock.RUnlock()
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return -1, err
		}
		if err := syscall.SetNonblock(fd, nonblock); err != nil {
			syscall.Close(fd)
			return -1, err
		}
		return fd, nil
	}
}

// fcntl is fcntl(2) on fd.
func fcntl(fd, cmd, arg int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), uintptr(cmd), uintptr(arg))
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// The shared fixtures (internal/testfd).
var (
	rawTCPListener = testfd.TCPListener
	testLogger     = testfd.Logger
)
