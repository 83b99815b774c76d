//go:build unix

// This file tests prefork end to end: the test binary plays prefork itself (so the
// supervisor runs under the race detector), the exec shim, and the workers, chosen
// by environment variables, as os/exec's own tests do.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pw "github.com/prefork/prefork/worker"
	"github.com/prefork/prefork/worker/httpserve"
)

const (
	roleEnv   = "PREFORK_TEST_AS" // "prefork": the test binary is prefork (PREFORK_* never reaches workers)
	workerEnv = "TESTWORKER"      // the worker's behaviour: http, exit:N
)

func TestMain(m *testing.M) {
	switch {
	case os.Getenv(shimEnv) != "":
		os.Exit(runShim(os.Args[1:]))
	case len(os.Args) > 1 && os.Args[1] == demoWorkerArg:
		os.Exit(runDemoWorker())
	case os.Getenv(roleEnv) == "prefork":
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	case os.Getenv(workerEnv) != "":
		os.Exit(testWorker(os.Getenv(workerEnv)))
	}
	os.Exit(m.Run())
}

// workerReport is what a test worker says about itself over HTTP.
type workerReport struct {
	PID      int               `json:"pid"`
	PPID     int               `json:"ppid"`
	PGID     int               `json:"pgid"`
	Fds      []int             `json:"fds"`
	Blocking bool              `json:"blocking"`
	Env      map[string]string `json:"env"`
}

// openFds lists the descriptors this process inherited, without opening one:
// those open without close-on-exec (whatever the worker's own Go runtime opens
// before this runs, such as the cgroup CPU files, is close-on-exec).
func openFds() []int {
	var fds []int
	for fd := 0; fd < 256; fd++ {
		if fl, err := fcntl(fd, syscall.F_GETFD, 0); err == nil && fl&syscall.FD_CLOEXEC == 0 {
			fds = append(fds, fd)
		}
	}
	return fds
}

func fcntl(fd, cmd, arg int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), uintptr(cmd), uintptr(arg))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// testWorker is a worker started by prefork under test.
func testWorker(role string) int {
	rep := workerReport{PID: os.Getpid(), PPID: os.Getppid(), Fds: openFds(), Env: map[string]string{}}

	rep.PGID, _ = syscall.Getpgid(0)
	if fl, err := fcntl(3, syscall.F_GETFL, 0); err == nil {
		rep.Blocking = fl&syscall.O_NONBLOCK == 0
	}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "LISTEN_") || strings.HasPrefix(k, "PREFORK_") || strings.HasPrefix(k, "WATCHDOG_") ||
			k == "NOTIFY_SOCKET" || k == "SERVER_STARTER_PORT" {
			rep.Env[k] = v
		}
	}
	if f := os.Getenv("TESTWORKER_FAIL_IF"); f != "" {
		if _, err := os.Stat(f); err == nil {
			return 4
		}
	}
	if code, ok := strings.CutPrefix(role, "exit:"); ok {
		n, _ := strconv.Atoi(code)
		return n
	}
	body, _ := json.Marshal(rep)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(body)
	})}
	if os.Getenv("TESTWORKER_IGNORE_TERM") != "" { // a worker that never stops on its own
		signal.Ignore(syscall.SIGTERM)
		ls, err := pw.Listeners()
		if err != nil {
			return 3
		}
		go srv.Serve(ls[0])
		pw.Ready()
		select {}
	}
	if err := httpserve.Serve(srv, 10*time.Second); err != nil {
		fmt.Fprintln(os.Stderr, "test worker:", err)
		return 3
	}
	return 0
}

// sdNotify sends one datagram to the worker's NOTIFY_SOCKET.
func sdNotify(state string) error {
	c, err := net.Dial("unixgram", os.Getenv("NOTIFY_SOCKET"))
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

// syncBuffer collects prefork's stderr for assertions.
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

// instance is one prefork under test.
type instance struct {
	t      *testing.T
	cmd    *exec.Cmd
	stderr *syncBuffer
	status string
	done   chan struct{}
	code   int
}

// startPrefork runs the test binary as prefork with these options; the worker
// command is the test binary again, in the given role. extraEnv goes to both.
func startPrefork(t *testing.T, role string, extraEnv []string, args ...string) *instance {
	t.Helper()
	dir := t.TempDir()
	in := &instance{t: t, stderr: &syncBuffer{}, status: filepath.Join(dir, "status.json"), done: make(chan struct{})}
	full := []string{"--status-file", in.status, "-v"}
	if role == "http" && !strings.Contains(strings.Join(args, " "), "--ready ") {
		full = append(full, "--ready", "notify") // the test worker says when it serves
	}
	full = append(full, args...)
	if role != "" {
		full = append(full, "--", os.Args[0])
	}
	in.cmd = exec.Command(os.Args[0], full...)
	in.cmd.Env = append(os.Environ(), roleEnv+"=prefork", workerEnv+"="+role, "GORACE=atexit_sleep_ms=0")
	in.cmd.Env = append(in.cmd.Env, extraEnv...)
	in.cmd.Stderr = in.stderr
	in.cmd.Stdout = in.stderr
	if err := in.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		in.cmd.Wait()
		in.code = in.cmd.ProcessState.ExitCode()
		if ws, ok := in.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			in.code = 128 + int(ws.Signal())
		}
		close(in.done)
	}()
	t.Cleanup(func() {
		select {
		case <-in.done:
		default:
			in.cmd.Process.Signal(syscall.SIGQUIT)
			select {
			case <-in.done:
			case <-time.After(10 * time.Second):
				in.cmd.Process.Kill()
			}
		}
		if t.Failed() {
			t.Logf("prefork stderr:\n%s", in.stderr.String())
		}
	})
	return in
}

func (in *instance) signal(sig syscall.Signal) {
	in.t.Helper()
	if err := in.cmd.Process.Signal(sig); err != nil {
		in.t.Fatal(err)
	}
}

// wait returns prefork's exit status, failing the test after the timeout.
func (in *instance) wait(timeout time.Duration) int {
	in.t.Helper()
	select {
	case <-in.done:
		return in.code
	case <-time.After(timeout):
		in.t.Fatalf("prefork did not exit within %v", timeout)
		return -1
	}
}

func (in *instance) readStatus() (statusFile, bool) {
	var st statusFile
	b, err := os.ReadFile(in.status)
	if err != nil || json.Unmarshal(b, &st) != nil {
		return st, false
	}
	return st, true
}

// waitFor polls the status file until cond holds.
func (in *instance) waitFor(what string, timeout time.Duration, cond func(statusFile) bool) statusFile {
	in.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if st, ok := in.readStatus(); ok && cond(st) {
			return st
		}
		select {
		case <-in.done:
			in.t.Fatalf("prefork exited (status %d) while waiting for %s", in.code, what)
		case <-time.After(20 * time.Millisecond):
		}
	}
	st, _ := in.readStatus()
	in.t.Fatalf("timed out waiting for %s; last status: %+v", what, st)
	return st
}

// readyWorkers waits until n workers are ready (and none is starting or stopping).
func (in *instance) readyWorkers(n int, timeout time.Duration) statusFile {
	in.t.Helper()
	return in.waitFor(fmt.Sprintf("%d ready workers", n), timeout, func(st statusFile) bool {
		if len(st.Workers) != n {
			return false
		}
		for _, w := range st.Workers {
			if w.State != stateReady {
				return false
			}
		}
		return true
	})
}

func (in *instance) addr() string {
	in.t.Helper()
	st := in.waitFor("listeners", 10*time.Second, func(st statusFile) bool { return len(st.Listeners) > 0 })
	return st.Listeners[0]
}

// get makes one request on a fresh connection and decodes the worker's report.
func get(addr string) (workerReport, error) {
	var rep workerReport
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		return rep, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return rep, err
	}
	return rep, json.Unmarshal(b, &rep)
}

func pidAlive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func TestWorkersShareOnePort(t *testing.T) {
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "3", "--ready-delay", "100ms")
	st := in.readyWorkers(3, 10*time.Second)
	addr := in.addr()
	want := map[int]bool{}
	for _, w := range st.Workers {
		want[w.PID] = true
	}
	seen := map[int]bool{}
	for i := 0; i < 300 && len(seen) < 3; i++ {
		rep, err := get(addr)
		if err != nil {
			t.Fatal(err)
		}
		if !want[rep.PID] {
			t.Fatalf("answer from pid %d, not a worker in %v", rep.PID, want)
		}
		seen[rep.PID] = true
	}
	if len(seen) != 3 {
		t.Errorf("only %d of 3 workers answered in 300 requests", len(seen))
	}
	in.signal(syscall.SIGTERM)
	if code := in.wait(15 * time.Second); code != 0 {
		t.Errorf("exit status %d after TERM, want 0", code)
	}
}

func TestWorkerEnvironmentAndDescriptors(t *testing.T) {
	in := startPrefork(t, "http", []string{"NOTIFY_SOCKET=/nonexistent/prefork-parent", "LISTEN_FDNAMES=stale"},
		"-l", "web=127.0.0.1:0", "-n", "2", "--ready-delay", "100ms", "--watchdog", "10s")
	in.readyWorkers(2, 10*time.Second)
	rep, err := get(in.addr())
	if err != nil {
		t.Fatal(err)
	}
	if got := rep.Env["LISTEN_PID"]; got != strconv.Itoa(rep.PID) {
		t.Errorf("LISTEN_PID=%q, want the worker's pid %d", got, rep.PID)
	}
	if rep.PPID != in.cmd.Process.Pid {
		t.Errorf("worker's parent is %d, want prefork %d (the shim must exec in place)", rep.PPID, in.cmd.Process.Pid)
	}
	if rep.PGID != rep.PID {
		t.Errorf("worker's process group is %d, want its own (%d)", rep.PGID, rep.PID)
	}
	if fmt.Sprint(rep.Fds) != "[0 1 2 3]" {
		t.Errorf("worker's descriptors are %v, want [0 1 2 3]", rep.Fds)
	}
	// fd 3 arrives blocking, but a Go neighbour's net.FileListener makes the shared
	// description non-blocking: TestPythonBlockingAcceptWorker checks the mode.
	want := map[string]string{"LISTEN_FDS": "1", "LISTEN_FDNAMES": "web", "PREFORK_WORKERS": "2",
		"PREFORK_GENERATION": "1", "PREFORK_MODE": "shared", "WATCHDOG_USEC": "10000000"}
	for k, v := range want {
		if rep.Env[k] != v {
			t.Errorf("%s=%q, want %q", k, rep.Env[k], v)
		}
	}
	if s := rep.Env["PREFORK_WORKER"]; s != "0" && s != "1" {
		t.Errorf("PREFORK_WORKER=%q, want 0 or 1", s)
	}
	if n := rep.Env["NOTIFY_SOCKET"]; n == "" || strings.Contains(n, "prefork-parent") {
		t.Errorf("NOTIFY_SOCKET=%q, want the worker's own socket", n)
	}
	if sp := rep.Env["SERVER_STARTER_PORT"]; !strings.HasSuffix(sp, "=3") || !strings.HasPrefix(sp, "127.0.0.1:") {
		t.Errorf("SERVER_STARTER_PORT=%q, want 127.0.0.1:PORT=3", sp)
	}
	for k := range rep.Env {
		if strings.HasPrefix(k, "PREFORK_SHIM") || k == "PREFORK_TEST_AS" {
			t.Errorf("internal variable %s reached the worker", k)
		}
	}
}

func TestKilledWorkerIsReplacedInItsSlot(t *testing.T) {
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "2", "--ready-delay", "100ms")
	st := in.readyWorkers(2, 10*time.Second)
	addr := in.addr()
	victim := st.Workers[1]
	// Keep requesting while the worker dies: the port must never stop answering.
	stop := make(chan struct{})
	errs := make(chan error, 1)
	go func() {
		defer close(errs)
		for i := 0; i < 2000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := get(addr); err != nil {
				errs <- err
				return
			}
		}
	}()
	syscall.Kill(victim.PID, syscall.SIGKILL)
	st = in.waitFor("replacement", 10*time.Second, func(st statusFile) bool {
		for _, w := range st.Workers {
			if w.Slot == victim.Slot && w.PID != victim.PID && w.State == stateReady {
				return true
			}
		}
		return false
	})
	close(stop)
	if err := <-errs; err != nil {
		t.Errorf("a request failed while a worker was replaced: %v", err)
	}
	for _, w := range st.Workers {
		if w.Slot == victim.Slot && (w.Restarts != 1 || w.LastExit == nil || *w.LastExit != 128+9) {
			t.Errorf("slot %d: restarts %d, last_exit %v; want 1 and 137", w.Slot, w.Restarts, w.LastExit)
		}
	}
	// The replacement reports the same slot number.
	for i := 0; i < 100; i++ {
		rep, err := get(addr)
		if err != nil {
			t.Fatal(err)
		}
		if rep.PID != victim.PID && rep.Env["PREFORK_WORKER"] == strconv.Itoa(victim.Slot) {
			return
		}
	}
	t.Errorf("no answer from the replacement of slot %d", victim.Slot)
}

func TestCrashLoopGivesUp(t *testing.T) {
	in := startPrefork(t, "exit:3", nil, "-l", "127.0.0.1:0", "-n", "1", "--backoff-min", "20ms",
		"--backoff-max", "200ms", "--max-restarts", "4")
	if code := in.wait(20 * time.Second); code != 1 {
		t.Fatalf("exit status %d after a crash loop, want 1", code)
	}
	out := in.stderr.String()
	for _, want := range []string{"crash loop", os.Args[0], "slot 0", "last exit status 3", "4 times"} {
		if !strings.Contains(out, want) {
			t.Errorf("crash-loop message lacks %q:\n%s", want, out)
		}
	}
	// The backoff doubles between failed starts.
	var delays []time.Duration
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if _, after, ok := strings.Cut(sc.Text(), "backoff="); ok {
			d, err := time.ParseDuration(strings.Fields(after)[0])
			if err == nil {
				delays = append(delays, d)
			}
		}
	}
	if len(delays) != 3 {
		t.Fatalf("saw %d backoff delays, want 3 (4 failed starts, the last gives up): %v", len(delays), delays)
	}
	for i := 1; i < len(delays); i++ {
		if delays[i] <= delays[i-1] {
			t.Errorf("backoff did not grow: %v", delays)
		}
	}
}

func TestRestartPolicy(t *testing.T) {
	p := restartPolicy{minUptime: time.Second, backoffMin: 100 * time.Millisecond, backoffMax: time.Second, maxRestarts: 5}
	want := []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond,
		800 * time.Millisecond, time.Second, time.Second}
	for f, w := range want {
		if got := p.delay(f); got != w {
			t.Errorf("delay(%d) = %v, want %v", f, got, w)
		}
	}
	p.jitter = func() float64 { return 1 }
	if got := p.delay(3); got != 320*time.Millisecond {
		t.Errorf("delay with full jitter = %v, want 320ms (20%% below 400ms)", got)
	}
	if got := p.delay(1); got != 100*time.Millisecond {
		t.Errorf("jitter must never go below --backoff-min: got %v", got)
	}
	if !p.failedStart(false, time.Hour) || !p.failedStart(true, 10*time.Millisecond) || p.failedStart(true, 2*time.Second) {
		t.Error("failedStart: a worker never ready, or up less than min-uptime, is a failed start; others are not")
	}
	if p.givesUp(4) || !p.givesUp(5) {
		t.Error("givesUp must trip at --max-restarts")
	}
	p.maxRestarts = 0
	if p.givesUp(1 << 20) {
		t.Error("--max-restarts 0 must never give up")
	}
}

func TestBackoffResetsAfterHealthyRun(t *testing.T) {
	// A worker that ran longer than --min-uptime restarts at once, without backoff.
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "1", "--ready-delay", "50ms",
		"--min-uptime", "100ms", "--backoff-min", "5s", "--backoff-max", "5s")
	st := in.readyWorkers(1, 10*time.Second)
	time.Sleep(150 * time.Millisecond)
	start := time.Now()
	syscall.Kill(st.Workers[0].PID, syscall.SIGKILL)
	in.waitFor("replacement", 4*time.Second, func(s statusFile) bool {
		return len(s.Workers) == 1 && s.Workers[0].PID != st.Workers[0].PID
	})
	if time.Since(start) >= 5*time.Second {
		t.Error("a worker that ran longer than --min-uptime was restarted after backoff")
	}
	if strings.Contains(in.stderr.String(), "backoff=") {
		t.Error("a healthy worker's exit counted as a failed start")
	}
}

func TestStopWithinGrace(t *testing.T) {
	in := startPrefork(t, "http", []string{"TESTWORKER_IGNORE_TERM=1"}, "-l", "127.0.0.1:0", "-n", "2",
		"--ready-delay", "50ms", "--grace", "500ms")
	st := in.readyWorkers(2, 10*time.Second)
	start := time.Now()
	in.signal(syscall.SIGTERM)
	if code := in.wait(10 * time.Second); code != 0 {
		t.Errorf("exit status %d, want 0", code)
	}
	if el := time.Since(start); el < 450*time.Millisecond || el > 5*time.Second {
		t.Errorf("stop took %v with workers that ignore TERM and --grace 500ms", el)
	}
	for _, w := range st.Workers {
		if pidAlive(w.PID) {
			t.Errorf("worker %d survived the stop", w.PID)
		}
	}
	if !strings.Contains(in.stderr.String(), "grace period") {
		t.Error("no log line says the workers were killed after the grace period")
	}
}

func TestSecondSignalKillsAtOnce(t *testing.T) {
	in := startPrefork(t, "http", []string{"TESTWORKER_IGNORE_TERM=1"}, "-l", "127.0.0.1:0", "-n", "1",
		"--ready-delay", "50ms", "--grace", "60s")
	in.readyWorkers(1, 10*time.Second)
	in.signal(syscall.SIGTERM)
	in.waitFor("stopping", 5*time.Second, func(st statusFile) bool { return st.Stopping })
	in.signal(syscall.SIGINT)
	if code := in.wait(10 * time.Second); code != 0 {
		t.Errorf("exit status %d, want 0", code)
	}
}

func TestKillingPreforkTakesWorkers(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the parent-death signal is Linux only")
	}
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "3", "--ready-delay", "50ms")
	st := in.readyWorkers(3, 10*time.Second)
	in.signal(syscall.SIGKILL)
	in.wait(5 * time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for _, w := range st.Workers {
		for pidAlive(w.PID) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if pidAlive(w.PID) {
			t.Errorf("worker %d outlived a SIGKILLed prefork", w.PID)
		}
	}
}

// load runs bounded concurrent requests until stop is closed; it returns the
// number of requests and the failures.
func load(addr string, clients int, keepAlive bool, stop <-chan struct{}) (total int, failed []error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: !keepAlive}}
			for n := 0; n < 100000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := c.Get("http://" + addr + "/")
				if err == nil {
					_, err = io.ReadAll(resp.Body)
					resp.Body.Close()
				}
				mu.Lock()
				total++
				if err != nil {
					failed = append(failed, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return total, failed
}

// modes are the modes every end-to-end test of the data path runs in.
func modes() []string {
	if reuseportSupported {
		return []string{"shared", "reuseport", "rr"}
	}
	return []string{"shared", "rr"}
}

func TestReloadDropsNothing(t *testing.T) {
	for _, mode := range modes() {
		for _, keepAlive := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/keepalive=%v", mode, keepAlive), func(t *testing.T) {
				testReload(t, mode, keepAlive)
			})
		}
	}
}

func testReload(t *testing.T, mode string, keepAlive bool) {
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "2", "--mode", mode)
	st := in.readyWorkers(2, 10*time.Second)
	addr := in.addr()
	stop := make(chan struct{})
	type result struct {
		total  int
		failed []error
	}
	res := make(chan result, 1)
	go func() {
		total, failed := load(addr, 4, keepAlive, stop)
		res <- result{total, failed}
	}()
	time.Sleep(200 * time.Millisecond)
	in.signal(syscall.SIGHUP)
	in.waitFor("generation 2 ready", 15*time.Second, func(s statusFile) bool {
		if len(s.Workers) != 2 {
			return false
		}
		for _, w := range s.Workers {
			if w.Generation != 2 || w.State != stateReady {
				return false
			}
		}
		return true
	})
	time.Sleep(200 * time.Millisecond)
	close(stop)
	r := <-res
	if len(r.failed) > 0 {
		t.Errorf("%d of %d requests failed during a reload; first: %v", len(r.failed), r.total, r.failed[0])
	}
	if r.total < 20 {
		t.Errorf("only %d requests ran during the reload", r.total)
	}
	for _, w := range st.Workers {
		if pidAlive(w.PID) {
			t.Errorf("old worker %d still runs after the reload", w.PID)
		}
	}
}

func TestRRModeEndToEnd(t *testing.T) {
	in := startPrefork(t, "http", nil, "-l", "web=127.0.0.1:0", "-n", "3", "--mode", "rr")
	st := in.readyWorkers(3, 10*time.Second)
	addr := in.addr()
	count := map[int]int{}
	for i := 0; i < 30; i++ {
		rep, err := get(addr)
		if err != nil {
			t.Fatal(err)
		}
		count[rep.PID]++
		if i == 0 {
			if fmt.Sprint(rep.Fds) != "[0 1 2 3]" {
				t.Errorf("rr worker's descriptors are %v, want [0 1 2 3]", rep.Fds)
			}
			if rep.Env["PREFORK_MODE"] != "rr" || rep.Env["LISTEN_FDNAMES"] != "web" {
				t.Errorf("rr worker environment %v", rep.Env)
			}
			for _, k := range []string{"LISTEN_FDS", "LISTEN_PID", "SERVER_STARTER_PORT"} {
				if _, ok := rep.Env[k]; ok {
					t.Errorf("%s is set in rr mode", k)
				}
			}
		}
	}
	// One request at a time: strict turns, 10 each.
	for _, w := range st.Workers {
		if count[w.PID] != 10 {
			t.Errorf("round robin gave %v, want 10 to each of the 3 workers", count)
			break
		}
	}
}

func TestReloadKeepsOldWorkersWhenNewOnesFail(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "broken")
	in := startPrefork(t, "http", []string{"TESTWORKER_FAIL_IF=" + marker}, "-l", "127.0.0.1:0", "-n", "2",
		"--ready-delay", "300ms")
	st := in.readyWorkers(2, 10*time.Second)
	os.WriteFile(marker, nil, 0o644) // new workers now exit at once: a broken deploy
	in.signal(syscall.SIGHUP)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(in.stderr.String(), "reload aborted") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(in.stderr.String(), "reload aborted") {
		t.Fatal("no 'reload aborted' after the new worker failed")
	}
	now := in.readyWorkers(2, 5*time.Second)
	for i, w := range now.Workers {
		if w.PID != st.Workers[i].PID {
			t.Errorf("slot %d: worker %d replaced by %d although the reload failed", w.Slot, st.Workers[i].PID, w.PID)
		}
	}
	if _, err := get(in.addr()); err != nil {
		t.Errorf("old workers stopped serving: %v", err)
	}
}

func TestScaleUpAndDown(t *testing.T) {
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "2", "--ready-delay", "50ms")
	in.readyWorkers(2, 10*time.Second)
	in.signal(syscall.SIGTTIN)
	st := in.readyWorkers(3, 10*time.Second)
	slots := map[int]bool{}
	for _, w := range st.Workers {
		slots[w.Slot] = true
	}
	if !slots[2] {
		t.Errorf("TTIN did not add slot 2: %+v", st.Workers)
	}
	for i := 0; i < 3; i++ {
		in.signal(syscall.SIGTTOU)
		time.Sleep(300 * time.Millisecond) // signals of one kind merge in the kernel
	}
	st = in.readyWorkers(1, 10*time.Second)
	if st.Workers[0].Slot != 0 {
		t.Errorf("TTOU removed slot 0; left %+v", st.Workers)
	}
	if _, err := get(in.addr()); err != nil {
		t.Error(err)
	}
}

func TestPythonBlockingAcceptWorker(t *testing.T) {
	out, err := exec.Command("python3", "-c", "import sys; print(sys.executable)").Output()
	if err != nil {
		t.Skip("python3 not installed")
	}
	py := strings.TrimSpace(string(out))
	// A C-style worker: blocking accept(2) on fd 3, as systemd-aware servers do.
	script := `import os, socket
assert int(os.environ["LISTEN_PID"]) == os.getpid()
s = socket.socket(fileno=3)
assert s.getblocking()
while True:
    c, _ = s.accept()
    c.recv(4096)
    c.sendall(b"HTTP/1.0 200 OK\r\n\r\npython " + os.environ["PREFORK_WORKER"].encode())
    c.close()
`
	in := startPrefork(t, "", nil, "-l", "127.0.0.1:0", "-n", "2", "--ready-delay", "300ms", "--", py, "-c", script)
	in.readyWorkers(2, 10*time.Second)
	c := &http.Client{Timeout: 5 * time.Second}
	for i := 0; i < 20; i++ {
		resp, err := c.Get("http://" + in.addr() + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.HasPrefix(string(b), "python ") {
			t.Fatalf("answer %q", b)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	noexec := filepath.Join(dir, "noexec")
	os.WriteFile(noexec, []byte("#!/bin/sh\n"), 0o644)
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{}, 2, "no command given"},
		{[]string{"-p", "8080"}, 2, "no command given"},
		{[]string{"--bogus", "true"}, 2, "unknown option --bogus"},
		{[]string{"-x", "true"}, 2, "unknown option -x"},
		{[]string{"-n"}, 2, "needs a value"},
		{[]string{"-n", "0", "true"}, 2, "invalid value for -n"},
		{[]string{"-n", "lots", "true"}, 2, "invalid value for -n"},
		{[]string{"-n", "100000", "true"}, 2, "more than prefork runs"},
		{[]string{"--workers=-3", "true"}, 2, "invalid value for --workers"},
		{[]string{"--mode", "fast", "true"}, 2, "invalid value for --mode"},
		{[]string{"--grace", "soon", "true"}, 2, "invalid value for --grace"},
		{[]string{"--grace", "-1s", "true"}, 2, "invalid value for --grace"},
		{[]string{"--stop-signal", "NOPE", "true"}, 2, "unknown signal"},
		{[]string{"--stop-signal", "99", "true"}, 2, "out of range"},
		{[]string{"--backoff-min", "5s", "--backoff-max", "1s", "true"}, 2, "above --backoff-max"},
		{[]string{"--backoff-min", "0", "true"}, 2, "--backoff-min must be above 0"},
		{[]string{"--max-restarts", "-1", "true"}, 2, "invalid value for --max-restarts"},
		{[]string{"--demo=yes"}, 2, "takes no value"},
		{[]string{"--demo", "true"}, 2, "give no command"},
		{[]string{"--log-format", "xml", "true"}, 2, "invalid value for --log-format"},
		{[]string{"--ready", "maybe", "true"}, 2, "invalid value for --ready"},
		{[]string{"--watchdog", "1ms", "true"}, 2, "too short"},
		{[]string{"--user", "no-such-user-here", "-p", "0", "true"}, 2, "no such user"},
		{[]string{"-p", "0", "no-such-command-xyz"}, 127, "command not found"},
		{[]string{"-p", "0", noexec}, 126, "not executable"},
		{[]string{"-p", "0", dir}, 126, "not executable"},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		code := run(c.args, &out, &errb)
		if code != c.code || !strings.Contains(errb.String(), c.msg) || !strings.HasPrefix(errb.String(), "prefork: ") {
			t.Errorf("prefork %q: status %d, stderr %q; want status %d and %q", c.args, code, errb.String(), c.code, c.msg)
		}
		if c.code == 2 && !strings.Contains(errb.String(), "--help") {
			t.Errorf("prefork %q: usage error without a hint: %q", c.args, errb.String())
		}
	}
}

func TestHelpAndVersion(t *testing.T) {
	for _, a := range []string{"-h", "--help"} {
		var out, errb bytes.Buffer
		if code := run([]string{a}, &out, &errb); code != 0 || !strings.Contains(out.String(), "usage: prefork") {
			t.Errorf("%s: status %d, output %q", a, code, out.String())
		}
	}
	var out bytes.Buffer
	if code := run([]string{"--version"}, &out, io.Discard); code != 0 || !strings.HasPrefix(out.String(), "prefork ") {
		t.Errorf("--version: status %d, output %q", code, out.String())
	}
}

func TestOptionParsingStopsAtCommand(t *testing.T) {
	c, err := parseArgs([]string{"-n", "2", "--grace=5s", "-p8080", "./server", "-p", "9000", "--grace", "1s"})
	if err != nil {
		t.Fatal(err)
	}
	if c.workers != 2 || c.grace != 5*time.Second || len(c.specs) != 1 {
		t.Errorf("options read wrong: %+v", c)
	}
	if got := strings.Join(c.command, " "); got != "./server -p 9000 --grace 1s" {
		t.Errorf("command %q: the command's own flags must not be read", got)
	}
	c, err = parseArgs([]string{"-p", "1", "--", "-weird-name", "x"})
	if err != nil || strings.Join(c.command, " ") != "-weird-name x" {
		t.Errorf("after --: command %q, err %v", c.command, err)
	}
}

func TestBindFailureExits1(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	in := startPrefork(t, "http", nil, "-l", l.Addr().String(), "-n", "1")
	if code := in.wait(10 * time.Second); code != 1 {
		t.Errorf("status %d when the port is taken, want 1", code)
	}
	if !strings.Contains(in.stderr.String(), l.Addr().String()) {
		t.Errorf("the bind error does not name the address: %s", in.stderr.String())
	}
}

func TestDemoWorkerInEveryMode(t *testing.T) {
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			in := startPrefork(t, "", nil, "-l", "127.0.0.1:0", "-n", "2", "--mode", mode, "--ready", "notify", "--demo")
			in.readyWorkers(2, 10*time.Second)
			addr := in.addr()
			for _, keepAlive := range []bool{true, false} {
				c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: !keepAlive}}
				for i := 0; i < 10; i++ {
					resp, err := c.Post("http://"+addr+"/", "text/plain", strings.NewReader("a body to skip"))
					if err != nil {
						t.Fatal(err)
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if !strings.HasPrefix(string(b), "hello from prefork worker ") {
						t.Fatalf("demo answered %q", b)
					}
				}
			}
			in.signal(syscall.SIGTERM)
			if code := in.wait(15 * time.Second); code != 0 {
				t.Errorf("exit status %d", code)
			}
		})
	}
}
