//go:build linux || darwin

// The fixture the tests drive the cluster primary with: the test plays a Node
// worker on a socket pair, byte for byte as Node's cluster module writes it,
// and a goroutine plays the owner (the supervisor loop).
package nodecluster

import (
	"encoding/json"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prefork/prefork/internal/sock"
	"github.com/prefork/prefork/internal/testfd"
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

// fakeRR records what the Node channel tells the dispatcher.
type fakeRR struct {
	mu   sync.Mutex
	acks []string
}

func (r *fakeRR) AddListener(fd int) (uint32, error) { return 0, nil }
func (r *fakeRR) RemoveListener(index uint32)        {}
func (r *fakeRR) Kick()                              {}
func (r *fakeRR) Shut(id int)                        {}
func (r *fakeRR) Ack(id int, seq uint32, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.acks = append(r.acks, strconv.Itoa(int(seq))+":"+strconv.FormatBool(ok))
}

func fcntl(fd, cmd, arg int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), uintptr(cmd), uintptr(arg))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// syncBuffer collects output that goroutines write at once.
type syncBuffer = testfd.Buffer

// The shared fixtures (internal/testfd).
var (
	socketPair = testfd.SocketPair
	freePort   = testfd.FreePort
)
