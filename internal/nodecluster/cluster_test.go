//go:build linux || darwin

// Tests of the Node IPC codec and the cluster primary against a socket pair:
// the test plays a Node worker, byte for byte as Node's cluster module writes it.
package nodecluster

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prefork/prefork/internal/sock"
)

// fakeWorker is the worker's end of a channel, read line by line with the
// descriptors that arrive.
type fakeWorker struct {
	t    *testing.T
	fd   int
	buf  []byte
	fds  []int
	msgs chan map[string]string // what the primary told the supervisor
	end  chan error
}

// testCluster is a Cluster with a goroutine that plays its owner (the
// supervisor loop): it handles the workers' events, and runs do's functions.
type testCluster struct {
	*Cluster
	calls chan func()
	quit  chan struct{}
}

// do runs fn on the owner goroutine and waits for it.
func (nc *testCluster) do(fn func()) {
	done := make(chan struct{})
	nc.calls <- func() { fn(); close(done) }
	<-done
}

func (nc *testCluster) run() {
	for {
		select {
		case fn := <-nc.calls:
			fn()
		case <-nc.quit:
			return
		}
	}
}

func newFakeWorker(t *testing.T, nc *testCluster, slot int) (*fakeWorker, *Worker) {
	t.Helper()
	master, child, err := NewPair()
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeWorker{t: t, fd: child, msgs: make(chan map[string]string, 16), end: make(chan error, 1)}
	var nw *Worker
	post := func(e Event) {
		handle := func() {
			switch out, err := nw.Handle(e); out {
			case Ready:
				f.msgs <- map[string]string{"READY": "1"}
			case Stopping:
				f.msgs <- map[string]string{"STOPPING": "1"}
			case Unheeded:
				f.msgs <- map[string]string{"UNHEEDED": "1"}
			case Ended:
				f.end <- err
			}
		}
		select {
		case nc.calls <- handle:
		case <-nc.quit: // the test is over
		}
	}
	nc.do(func() { nw, err = nc.Attach(4242+slot, slot, master, nil, post) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		nc.do(nw.Detach)
		syscall.Close(child)
		for _, fd := range f.fds {
			syscall.Close(fd)
		}
	})
	return f, nw
}

func (f *fakeWorker) write(line string) {
	f.t.Helper()
	if _, err := syscall.Write(f.fd, []byte(line+"\n")); err != nil {
		f.t.Fatal(err)
	}
}

// writeFd sends a line with a descriptor, as a worker's process.send(m, handle) does.
func (f *fakeWorker) writeFd(line string, fd int) {
	f.t.Helper()
	if err := syscall.Sendmsg(f.fd, []byte(line+"\n"), syscall.UnixRights(fd), nil, 0); err != nil {
		f.t.Fatal(err)
	}
}

// read returns the next line from the primary (decoded) and the descriptor
// that came with it, or -1; it fails the test after a timeout.
func (f *fakeWorker) read() (map[string]any, int) {
	f.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	syscall.SetNonblock(f.fd, true)
	for {
		if i := strings.IndexByte(string(f.buf), '\n'); i >= 0 {
			line := f.buf[:i]
			f.buf = f.buf[i+1:]
			var m map[string]any
			if err := json.Unmarshal(line, &m); err != nil {
				f.t.Fatalf("primary sent a line that is not JSON: %q", line)
			}
			fd := -1
			if m["cmd"] == "NODE_HANDLE" && len(f.fds) > 0 {
				fd, f.fds = f.fds[0], f.fds[1:]
			}
			return m, fd
		}
		p := make([]byte, 4096)
		oob := make([]byte, syscall.CmsgSpace(4*4))
		n, oobn, _, _, err := syscall.Recvmsg(f.fd, p, oob, 0)
		if err == syscall.EAGAIN {
			if time.Now().After(deadline) {
				f.t.Fatalf("no line from the primary within 5s (have %q)", f.buf)
			}
			time.Sleep(time.Millisecond)
			continue
		}
		if err != nil || n == 0 {
			f.t.Fatalf("channel read: n=%d err=%v", n, err)
		}
		if oobn > 0 {
			msgs, _ := syscall.ParseSocketControlMessage(oob[:oobn])
			for i := range msgs {
				fds, _ := syscall.ParseUnixRights(&msgs[i])
				f.fds = append(f.fds, fds...)
			}
		}
		f.buf = append(f.buf, p[:n]...)
	}
}

// quiet checks that the primary sends nothing for a while.
func (f *fakeWorker) quiet(d time.Duration) {
	f.t.Helper()
	syscall.SetNonblock(f.fd, true)
	time.Sleep(d)
	p := make([]byte, 4096)
	if n, _, _, _, err := syscall.Recvmsg(f.fd, p, nil, 0); err == nil && n > 0 {
		f.t.Fatalf("primary sent %q; want nothing", p[:n])
	}
}

// newTestCluster is a cluster over listeners bound for specs (-l's syntax),
// with its owner goroutine. Tests that play rr mode set its rr themselves.
func newTestCluster(t *testing.T, specs ...string) (*testCluster, []*sock.Listener) {
	t.Helper()
	var ls []*sock.Listener
	if len(specs) > 0 {
		var parsed []sock.Spec
		for _, in := range specs {
			spec, err := sock.ParseSpec(in)
			if err != nil {
				t.Fatal(err)
			}
			parsed = append(parsed, spec)
		}
		var err error
		if ls, err = sock.Bind(parsed, 0, false); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sock.Close(ls...) })
	}
	c := Config{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Listeners: ls, ClosingWait: time.Second}
	nc := &testCluster{New(c), make(chan func()), make(chan struct{})}
	go nc.run()
	t.Cleanup(func() { nc.do(nc.Close); close(nc.quit) })
	return nc, ls
}

// stop calls nw.Stop on the owner goroutine.
func (nc *testCluster) stop(nw *Worker) (wait bool) {
	nc.do(func() { wait = nw.Stop() })
	return wait
}

func portOf(t *testing.T, fd int) int {
	t.Helper()
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		return sa.Port
	case *syscall.SockaddrInet6:
		return sa.Port
	}
	t.Fatalf("not an inet socket: %T", sa)
	return 0
}

func TestNodeQueryServerShared(t *testing.T) {
	nc, ls := newTestCluster(t, "127.0.0.1:0")
	port := portOf(t, ls[0].FD)
	f, _ := newFakeWorker(t, nc, 0)
	f.write(`{"cmd":"NODE_CLUSTER","act":"online","seq":0}`)
	f.write(`{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":null,"port":` + strconv.Itoa(port) + `,"addressType":4,"backlog":0,"seq":1}`)
	m, fd := f.read()
	if m["cmd"] != "NODE_HANDLE" || m["type"] != "net.Native" {
		t.Fatalf("reply %v: want a NODE_HANDLE of type net.Native", m)
	}
	if fd < 0 {
		t.Fatal("no descriptor came with the reply")
	}
	inner := m["msg"].(map[string]any)
	if inner["cmd"] != "NODE_CLUSTER" || inner["ack"] != 1.0 || inner["errno"] != 0.0 || inner["key"] == nil {
		t.Fatalf("inner reply %v: want cmd NODE_CLUSTER, ack 1, errno 0 and a key", inner)
	}
	if got := portOf(t, fd); got != port {
		t.Fatalf("the descriptor is bound to port %d, want prefork's listener on %d", got, port)
	}
	if fl, _ := fcntl(fd, syscall.F_GETFL, 0); fl&syscall.O_NONBLOCK == 0 {
		t.Fatal("the listening socket given to a Node worker is blocking (Node hangs in accept4)")
	}
	f.write(`{"cmd":"NODE_HANDLE_ACK"}`)

	// listen({fd: 3}) is prefork's listener 0; fd 9 is none of its listeners.
	f.write(`{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":null,"port":null,"addressType":null,"fd":3,"backlog":0,"seq":2}`)
	m, fd = f.read()
	if inner := m["msg"].(map[string]any); fd < 0 || portOf(t, fd) != port || inner["ack"] != 2.0 {
		t.Fatalf("listen({fd:3}): reply %v fd %d: want prefork's listener 0", m, fd)
	}
	f.write(`{"cmd":"NODE_HANDLE_ACK"}`)
	f.write(`{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":null,"port":null,"addressType":null,"fd":9,"backlog":0,"seq":3}`)
	m, fd = f.read()
	if fd >= 0 || m["errno"] != -float64(syscall.EBADF) || m["ack"] != 3.0 {
		t.Fatalf("listen({fd:9}): reply %v: want errno %d and no descriptor", m, -int(syscall.EBADF))
	}
}

func TestNodeQueryServerBindsOnRequest(t *testing.T) {
	nc, _ := newTestCluster(t)
	a, _ := newFakeWorker(t, nc, 0)
	b, _ := newFakeWorker(t, nc, 1)
	// TLS servers send their ticket keys; every worker gets the first one's.
	q := `{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":{"ticketKeys":"%s"},"address":"127.0.0.1","port":0,"addressType":4,"backlog":0,"seq":1}`
	a.write(strings.Replace(q, "%s", "aaaa", 1))
	ma, fa := a.read()
	b.write(strings.Replace(q, "%s", "bbbb", 1))
	mb, fb := b.read()
	if fa < 0 || fb < 0 {
		t.Fatalf("replies %v / %v: want a socket each", ma, mb)
	}
	if pa, pb := portOf(t, fa), portOf(t, fb); pa != pb || pa == 0 {
		t.Fatalf("workers got ports %d and %d: want one socket bound once and shared", pa, pb)
	}
	for _, m := range []map[string]any{ma, mb} {
		data, _ := m["msg"].(map[string]any)["data"].(map[string]any)
		if data["ticketKeys"] != "aaaa" {
			t.Fatalf("reply %v: want the first worker's ticket keys for everyone", m)
		}
	}
	// An address in use elsewhere: Node's negative errno, no descriptor.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	p := busy.Addr().(*net.TCPAddr).Port
	a.write(`{"cmd":"NODE_HANDLE_ACK"}`)
	a.write(`{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":"127.0.0.1","port":` + strconv.Itoa(p) + `,"addressType":4,"backlog":0,"seq":2}`)
	m, fd := a.read()
	if fd >= 0 || m["errno"] != -float64(syscall.EADDRINUSE) || m["ack"] != 2.0 {
		t.Fatalf("reply %v: want errno %d (EADDRINUSE) for a port in use", m, -int(syscall.EADDRINUSE))
	}
}

func TestNodeMessages(t *testing.T) {
	nc, _ := newTestCluster(t)
	f, nw := newFakeWorker(t, nc, 0)
	f.write(`{"cmd":"NODE_CLUSTER","act":"online","seq":0}`)

	// Unknown and non-object messages are ignored; the channel keeps working.
	f.write(`"hello"`)
	f.write(`[1,2,3]`)
	f.write(`{"cmd":"NODE_SOCKET_NOTIFY_CLOSE","key":"x"}`)
	f.write(`{"cmd":"NODE_CLUSTER","act":"somethingNew","seq":1}`)
	f.write(`{"act":{"not":"a string"},"seq":"x"}`)
	f.quiet(50 * time.Millisecond)

	// A handle the worker sends is acked (else its channel stalls) and closed.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	f.writeFd(`{"cmd":"NODE_HANDLE","type":"net.Server","msg":"new_worker"}`, int(w.Fd()))
	w.Close()
	if m, _ := f.read(); m["cmd"] != "NODE_HANDLE_ACK" {
		t.Fatalf("after the worker sent a handle: %v, want NODE_HANDLE_ACK", m)
	}
	r.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the primary kept the handle the worker sent: read %v, want EOF", err)
	}
	r.Close()

	// The seeds' suicide message: STOPPING=1.
	f.write(`{"act":"suicide"}`)
	if m := <-f.msgs; m["STOPPING"] != "1" {
		t.Fatalf("{act:'suicide'} gave %v, want STOPPING=1", m)
	}
	// listening: READY=1.
	f.write(`{"cmd":"NODE_CLUSTER","act":"listening","index":0,"address":null,"port":1,"addressType":4,"seq":2}`)
	if m := <-f.msgs; m["READY"] != "1" {
		t.Fatalf("listening gave %v, want READY=1", m)
	}

	// A graceful stop sends disconnect once, never twice.
	if !nc.stop(nw) {
		t.Fatal("stop: want to wait for the channel to close")
	}
	if m, _ := f.read(); m["cmd"] != "NODE_CLUSTER" || m["act"] != "disconnect" || m["seq"] == nil {
		t.Fatalf("stop sent %v, want act disconnect", m)
	}
	nc.stop(nw)
	f.quiet(50 * time.Millisecond)
	syscall.Shutdown(f.fd, syscall.SHUT_WR)
	select {
	case err := <-f.end:
		if err != nil {
			t.Fatalf("channel ended with %v, want end of file", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the end of the channel was not reported")
	}
}

func TestNodeExitedAfterDisconnect(t *testing.T) {
	nc, _ := newTestCluster(t)
	f, nw := newFakeWorker(t, nc, 0)
	f.write(`{"cmd":"NODE_CLUSTER","act":"online","seq":0}`)
	f.write(`{"cmd":"NODE_CLUSTER","act":"exitedAfterDisconnect","seq":7}`)
	if m, _ := f.read(); m["cmd"] != "NODE_CLUSTER" || m["ack"] != 7.0 {
		t.Fatalf("exitedAfterDisconnect got %v, want a reply with ack 7", m)
	}
	if m := <-f.msgs; m["STOPPING"] != "1" {
		t.Fatalf("exitedAfterDisconnect gave %v, want STOPPING=1", m)
	}
	// The worker began its own disconnect: prefork must not send another.
	if !nc.stop(nw) {
		t.Fatal("stop: want to wait for the channel to close")
	}
	f.quiet(50 * time.Millisecond)
}

func TestNodeNoDisconnectBeforeOnline(t *testing.T) {
	nc, _ := newTestCluster(t)
	_, nw := newFakeWorker(t, nc, 0)
	if nc.stop(nw) {
		t.Fatal("a worker that never said online is not a cluster worker: stop must not wait for disconnect")
	}
}

// fakeRR records what the Node channel tells the dispatcher.
type fakeRR struct {
	mu   sync.Mutex
	acks []string
}

func (r *fakeRR) AddListener(fd int) (uint32, error) { return 0, nil }
func (r *fakeRR) Kick()                              {}
func (r *fakeRR) Shut(id int)                        {}
func (r *fakeRR) Ack(id int, seq uint32, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.acks = append(r.acks, strconv.Itoa(int(seq))+":"+strconv.FormatBool(ok))
}

func TestNodeNewconn(t *testing.T) {
	nc, ls := newTestCluster(t, "127.0.0.1:0")
	rr := &fakeRR{}
	nc.rr = rr
	nc.ls[0].rr = true
	port := portOf(t, ls[0].FD)
	f, nw := newFakeWorker(t, nc, 0)
	f.write(`{"cmd":"NODE_CLUSTER","act":"online","seq":0}`)

	c1, c2 := socketPair(t)
	if err := nw.SendConn(0, 0, c1); err != syscall.EAGAIN {
		t.Fatalf("newconn before the worker listens: %v, want EAGAIN (another worker's turn)", err)
	}
	f.write(`{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":null,"port":` + strconv.Itoa(port) + `,"addressType":4,"backlog":0,"seq":1}`)
	m, fd := f.read()
	if fd >= 0 || m["cmd"] != "NODE_CLUSTER" || m["ack"] != 1.0 || m["errno"] != nil {
		t.Fatalf("rr reply %v fd %d: want a round-robin reply without a descriptor", m, fd)
	}
	if sn, _ := m["sockname"].(map[string]any); sn["port"] != float64(port) {
		t.Fatalf("rr reply %v: want sockname.port %d", m, port)
	}
	key := m["key"].(string)
	if err := nw.SendConn(41, 0, c1); err != nil {
		t.Fatal(err)
	}
	m, fd = f.read()
	inner, _ := m["msg"].(map[string]any)
	if m["type"] != "net.Native" || inner["act"] != "newconn" || inner["key"] != key || inner["seq"] != 41.0 || fd < 0 {
		t.Fatalf("newconn %v fd %d: want net.Native, act newconn, key %q, seq 41 and the connection", m, fd, key)
	}
	if fl, _ := fcntl(fd, syscall.F_GETFL, 0); fl&syscall.O_NONBLOCK == 0 {
		t.Fatal("the connection given to a Node worker is blocking")
	}
	syscall.Write(fd, []byte("x"))
	b := make([]byte, 1)
	if n, _ := syscall.Read(c2, b); n != 1 {
		t.Fatal("the descriptor sent is not the connection")
	}
	f.write(`{"cmd":"NODE_HANDLE_ACK"}`)
	f.write(`{"cmd":"NODE_CLUSTER","ack":41,"accepted":true,"seq":2}`)
	// A NACKed newconn is refused: the connection goes elsewhere.
	if err := nw.SendConn(42, 0, c1); err != nil {
		t.Fatal(err)
	}
	f.read()
	f.write(`{"cmd":"NODE_HANDLE_NACK"}`)
	f.write(`{"cmd":"NODE_CLUSTER","ack":43,"accepted":false,"seq":3}`)
	deadline := time.Now().Add(5 * time.Second)
	for {
		rr.mu.Lock()
		got := strings.Join(rr.acks, " ")
		rr.mu.Unlock()
		if got == "41:true 42:false 43:false" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("acks to the dispatcher: %q, want 41:true 42:false 43:false", got)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// After close, the worker gets no more connections on that key.
	f.write(`{"cmd":"NODE_CLUSTER","act":"close","key":"` + key + `","seq":4}`)
	deadline = time.Now().Add(5 * time.Second)
	for nw.CanTake(0) {
		if time.Now().After(deadline) {
			t.Fatal("after close the worker still takes connections for that listener")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func socketPair(t *testing.T) (int, int) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fds[0]); syscall.Close(fds[1]) })
	return fds[0], fds[1]
}

func TestNodeLineParsing(t *testing.T) {
	var m msg
	for _, tc := range []struct {
		line     string
		ok       bool
		cmd, act string
	}{
		{`{"cmd":"NODE_HANDLE_ACK"}`, true, "NODE_HANDLE_ACK", ""},
		{`{"cmd":"NODE_CLUSTER","act":"online","seq":0}`, true, "NODE_CLUSTER", "online"},
		{`{"act":"suicide"}`, true, "", "suicide"},
		{`{"cmd":"mine","act":"suicide"}`, true, "", "suicide"}, // a user object with a cmd
		{`{"cmd":"NODE_","act":"x"}`, true, "", "x"},            // NODE_ alone is not internal
		{`"server"`, false, "", ""},
		{`42`, false, "", ""},
		{`{"seq":"not a number","act":"suicide"}`, true, "", "suicide"},
		{`{broken`, false, "", ""},
	} {
		ok := parseLine([]byte(tc.line), &m)
		if ok != tc.ok || ok && (m.Cmd != tc.cmd || m.Act != tc.act) {
			t.Errorf("%s: ok=%v cmd=%q act=%q, want ok=%v cmd=%q act=%q", tc.line, ok, m.Cmd, m.Act, tc.ok, tc.cmd, tc.act)
		}
	}
}

// The hand-written parser of the per-connection ack line agrees with encoding/json.
func TestNodeAcceptedLine(t *testing.T) {
	for _, line := range []string{
		`{"cmd":"NODE_CLUSTER","ack":2,"accepted":true,"seq":3}`,
		`{"cmd":"NODE_CLUSTER","ack":4294967295,"accepted":false,"seq":0}`,
		`{"cmd":"NODE_CLUSTER","ack":2,"accepted":true,"seq":3,"x":1}`,
		`{"cmd":"NODE_CLUSTER","ack":-2,"accepted":true,"seq":3}`,
		`{"cmd":"NODE_CLUSTER","ack":2,"accepted":truex,"seq":3}`,
		`{"cmd":"NODE_CLUSTER","ack":2.5,"accepted":true,"seq":3}`,
	} {
		var fast, slow msg
		ok := parseAcceptedLine([]byte(line), &fast)
		json.Unmarshal([]byte(line), &slow)
		if ok && (fast.Cmd != slow.Cmd || fast.Accepted != slow.Accepted || fast.Ack.n != slow.Ack.n || fast.Seq.n != slow.Seq.n) {
			t.Errorf("%s: fast %+v, encoding/json %+v", line, fast, slow)
		}
		if want := strings.Count(line, ",") == 3 && !strings.ContainsAny(line, "-.x"); ok != want {
			t.Errorf("%s: fast path taken %v, want %v", line, ok, want)
		}
	}
}

// A stop in rr mode sends disconnect only once the worker has answered every
// connection it was handed, settleTime after the last answer: told when that
// happens, not polling.
func TestNodeStopSettles(t *testing.T) {
	nc, ls := newTestCluster(t, "127.0.0.1:0")
	nc.rr = &fakeRR{}
	nc.ls[0].rr = true
	f, nw := newFakeWorker(t, nc, 0)
	f.write(`{"cmd":"NODE_CLUSTER","act":"online","seq":0}`)
	f.write(`{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":null,"port":` + strconv.Itoa(portOf(t, ls[0].FD)) + `,"addressType":4,"backlog":0,"seq":1}`)
	f.read()
	c1, _ := socketPair(t)
	if err := nw.SendConn(7, 0, c1); err != nil {
		t.Fatal(err)
	}
	f.read()
	f.write(`{"cmd":"NODE_HANDLE_ACK"}`)
	if !nc.stop(nw) {
		t.Fatal("stop: want to wait for the channel to close")
	}
	f.quiet(3 * settleTime / 2) // connection 7 is not answered yet
	answered := time.Now()
	f.write(`{"cmd":"NODE_CLUSTER","ack":7,"accepted":true,"seq":2}`)
	if m, _ := f.read(); m["act"] != "disconnect" {
		t.Fatalf("stop sent %v, want act disconnect", m)
	}
	if d := time.Since(answered); d < settleTime {
		t.Fatalf("disconnect %v after the last connection was answered, want at least %v", d, settleTime)
	}
}

func fcntl(fd, cmd, arg int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), uintptr(cmd), uintptr(arg))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// freePort is a TCP port free on 127.0.0.1 now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// syncBuffer collects log lines for assertions.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Issue 18.3: a line may grow to MaxLine, not past it, and the buffer a big
// line grew is given up once that line is handled.
func TestNodeLineBound(t *testing.T) {
	c := &channel{}
	var got int
	c.handle = func(m *msg, fd int) { got++ }
	big := append([]byte(`{"act":"`), bytes.Repeat([]byte("x"), 10<<20)...)
	for i := 0; i < len(big); i += 64 << 10 {
		if err := c.lines(big[i:min(i+64<<10, len(big))]); err != nil {
			t.Fatalf("a 10 MiB line: %v", err)
		}
	}
	if err := c.lines([]byte("\"}\n{\"act\":\"suicide\"}\n")); err != nil || got != 2 {
		t.Fatalf("after a 10 MiB message: %v, %d lines handled", err, got)
	}
	if cap(c.partial) > keepPartial {
		t.Errorf("the line buffer keeps %d bytes after a 10 MiB message", cap(c.partial))
	}
	chunk := bytes.Repeat([]byte("y"), 1<<20)
	var err error
	for i := 0; i <= MaxLine>>20 && err == nil; i++ {
		err = c.lines(chunk)
	}
	if err != ErrLineTooLong || c.partial != nil {
		t.Errorf("a line past MaxLine: %v, buffer of %d bytes; want ErrLineTooLong and none", err, cap(c.partial))
	}
}

// Issue 18.4: descriptors attached to lines that are not NODE_HANDLE are
// closed once the read that brought them is handled; one that came with a
// NODE_HANDLE line is the handler's.
func TestNodeStrayDescriptors(t *testing.T) {
	master, child, err := NewPair()
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(child)
	c, err := newChannel(master, "test")
	if err != nil {
		t.Fatal(err)
	}
	handled := make(chan int, 16)
	c.handle = func(m *msg, fd int) {
		if fd >= 0 {
			handled <- fd
		}
	}
	ended := make(chan struct{})
	c.closed = func(error) { close(ended) }
	c.start()
	defer func() { c.close(); <-ended }()
	null, err := syscall.Open("/dev/null", syscall.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(null)
	before := len(openFds(t))
	for i := 0; i < 50; i++ {
		if err := syscall.Sendmsg(child, []byte(`{"hello":1}`+"\n"), syscall.UnixRights(null), nil, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Sendmsg(child, []byte(`{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"x"}}`+"\n"), syscall.UnixRights(null), nil, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case fd := <-handled:
		syscall.Close(fd)
	case <-time.After(5 * time.Second):
		t.Fatal("the NODE_HANDLE line's descriptor never reached the handler")
	}
	if after := len(openFds(t)); after > before {
		t.Errorf("%d descriptors open after 50 sent without NODE_HANDLE, %d before", after, before)
	}
}

func openFds(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("/dev/fd")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		t.Fatal(err)
	}
	return names
}
