//go:build linux || darwin

// This file tests rr mode with real worker processes (Python and Go) behind the
// dispatcher as prefork starts it (fdpass_*.go's accept), and holds the churn
// benchmarks of rr against shared mode. The dispatcher's own tests, over
// socket pairs, are in internal/rr.
package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prefork/prefork/internal/rr"
	"github.com/prefork/prefork/internal/rrwire"
	"github.com/prefork/prefork/internal/testfd"
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

// startRRWorker runs argv as an rr worker of d, the way the supervisor does:
// the worker end of a new handoff pair as fd 3, PREFORK_MODE=rr, LISTEN_FDNAMES
// with one name per listener and no LISTEN_FDS; it is attached, and made ready
// once the returned function is called (or at once if ready is true). The
// process is killed and detached at the end of the test.
func startRRWorker(t *testing.T, d *rr.Dispatcher, names []string, slot int, ready bool, argv ...string) *exec.Cmd {
	t.Helper()
	master, wfd, err := rrwire.NewPair()
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
	d.Attach(pid, handoffSender(master), master)
	if ready {
		d.Ready(pid)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		d.Detach(pid)
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
	for _, s := range f.d.Stats() {
		for s.Acked != 5 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
			for _, s2 := range f.d.Stats() {
				if s2.ID == s.ID {
					s = s2
				}
			}
		}
		if s.Handed != 5 || s.Acked != 5 {
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
	f.waitStat(stuck.Process.Pid, "full", func(s rr.WorkerStats) bool { return s.Inflight == W })
	// The stuck worker dies holding W unacked connections: they go to the Go worker.
	stuck.Process.Kill()
	stuck.Wait()
	f.d.Detach(stuck.Process.Pid)
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
	s := f.d.Stats()
	if len(s) != 1 {
		t.Fatalf("stats %+v, want the Go worker alone", s)
	}
	// The ack left the worker before its answer, but prefork may read it a moment later.
	f.waitStat(s[0].ID, fmt.Sprintf("%d handed and acked", n), func(s rr.WorkerStats) bool {
		return s.Handed == uint64(n) && s.Acked == uint64(n) && s.Inflight == 0
	})
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
	d, err := newDispatcher([]int{lfd}, rrDefaultWindow, slog.New(slog.DiscardHandler), nil, nil, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(d.Close)
	self, _ := os.Executable()
	startGoWorkers(b, 2, func(i int) *exec.Cmd {
		master, wfd, err := rrwire.NewPair()
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
		d.Attach(cmd.Process.Pid, handoffSender(master), master)
		d.Ready(cmd.Process.Pid)
		b.Cleanup(func() { d.Detach(cmd.Process.Pid) })
		return cmd
	})
	churn(b, addr)
}

// rrFixture is a dispatcher over nl real listeners, as prefork starts it.
type rrFixture struct {
	t     *testing.T
	d     *rr.Dispatcher
	addrs []string
}

func newRRFixture(t *testing.T, nl, window int) *rrFixture {
	t.Helper()
	f := &rrFixture{t: t}
	var lfds []int
	for i := 0; i < nl; i++ {
		fd, addr := rawTCPListener(t)
		lfds = append(lfds, fd)
		f.addrs = append(f.addrs, addr)
	}
	d, err := newDispatcher(lfds, window, testLogger(t), nil, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.d = d
	t.Cleanup(d.Close)
	return f
}

// waitStat polls the stats (acks are handled asynchronously) until ok holds.
func (f *rrFixture) waitStat(id int, what string, ok func(rr.WorkerStats) bool) {
	f.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var s rr.WorkerStats
		for _, x := range f.d.Stats() {
			if x.ID == id {
				s = x
			}
		}
		if ok(s) {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("worker %d: %s never held: %+v", id, what, s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The shared fixtures (internal/testfd).
var (
	rawTCPListener = testfd.TCPListener
	testLogger     = testfd.Logger
)

// A server that does not speak the rr handoff protocol (it never reads fd 3,
// as gunicorn does not) under --mode rr: a warning within a few seconds
// names the protocol, and the status shows the connections waiting for it.
func TestRRWorkerThatNeverReads(t *testing.T) {
	sock := ctlSock(t)
	in := startPreforkWrapped(t, nil, nil, "--mode", "rr", "-l", "127.0.0.1:0", "-n", "1", "--ready", "delay", "--ready-delay", "100ms",
		"--control", sock, "--", "sh", "-c", "exec sleep 60")
	in.readyWorkers(1, 10*time.Second)
	for i := 0; i < 2; i++ {
		c, err := net.DialTimeout("tcp", in.addr(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	start := time.Now()
	for !strings.Contains(in.stderr.String(), "rr handoff protocol") {
		if time.Since(start) > 15*time.Second {
			t.Fatal("no warning that the worker does not read its handoff channel")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !regexp.MustCompile(`pending=2\b`).MatchString(in.stderr.String()) {
		t.Errorf("the warning does not say how many connections wait")
	}
	if js := mustCtl(t, sock, "status", "--json"); !strings.Contains(js, `"rr_unread": true`) && !strings.Contains(js, `"rr_unread":true`) {
		t.Errorf("status --json does not mark the worker rr_unread:\n%s", js)
	}
	if txt := mustCtl(t, sock, "status"); !strings.Contains(txt, "2/2/0 unread") {
		t.Errorf("status does not show the worker's 2 waiting connections as unread:\n%s", txt)
	}
	in.signal(syscall.SIGTERM)
	if code := in.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit status %d after TERM", code)
	}
}
