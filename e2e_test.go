//go:build linux || darwin

// This file holds the end-to-end test harness: the test binary plays prefork
// itself (so the supervisor runs under the race detector), the exec shim, and the
// workers, chosen by environment variables, as os/exec's own tests do.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prefork/prefork/internal/demo"
	"github.com/prefork/prefork/internal/testfd"
	"github.com/prefork/prefork/internal/upgrade"
	pw "github.com/prefork/prefork/worker"
	"github.com/prefork/prefork/worker/httpserve"
)

func TestMain(m *testing.M) {
	switch {
	case os.Getenv(upgrade.CheckEnv) != "": // upgrade_test.go
		upgradeTestBuild()
		os.Exit(answerUpgradeCheck())
	case os.Getenv(shimEnv) != "":
		os.Exit(runShim(os.Args[1:]))
	case len(os.Args) > 1 && os.Args[1] == demo.Arg:
		os.Exit(demo.Run())
	case os.Getenv(roleEnv) == "prefork":
		upgradeTestBuild()
		os.Exit(onMainThread(func() int { return run(os.Args[1:], os.Stdout, os.Stderr) }))
	case os.Getenv(workerEnv) == "notify":
		os.Exit(notifyWorker()) // notify_test.go
	case os.Getenv(workerEnv) != "":
		os.Exit(testWorker(os.Getenv(workerEnv)))
	}
	os.Exit(runTests(m))
}

// runTests runs the tests with TMPDIR in a directory of their own, removed at
// the end: the notify directories of the preforks that tests SIGKILL on
// purpose (no prefork can clean up after SIGKILL) go with it.
func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "prefork-test.")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Reachable as /tmp is: workers and clients run as nobody in some tests,
	// and prefork's notify directory for --user lives in here.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	os.Setenv("TMPDIR", dir)
	os.Unsetenv("XDG_RUNTIME_DIR") // prefork would put them there instead
	return m.Run()
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

// extraRoles holds worker roles that other test files register in init.
var extraRoles = map[string]func() int{}

// testWorker is a worker started by prefork under test.
func testWorker(role string) int {
	if f := extraRoles[role]; f != nil {
		return f()
	}
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

// sdNotify is how test workers talk to prefork: the worker package's own.
var sdNotify = pw.Notify

// syncBuffer collects output that goroutines write at once.
type syncBuffer = testfd.Buffer

// instance is one prefork under test.
type instance struct {
	t      *testing.T
	cmd    *exec.Cmd
	stderr *syncBuffer
	status string
	done   chan struct{}
	code   int
	waited bool // the test read the exit status itself and judged it
}

// newInstance is an instance with its status file in a fresh directory; its
// launcher sets in.cmd and calls in.watch.
func newInstance(t *testing.T) *instance {
	return &instance{t: t, stderr: &syncBuffer{}, status: filepath.Join(t.TempDir(), "status.json"), done: make(chan struct{})}
}

// preforkEnv is the environment of the test binary playing prefork.
func preforkEnv(role string, extra ...string) []string {
	env := append(os.Environ(), roleEnv+"=prefork", workerEnv+"="+role, "GORACE=atexit_sleep_ms=0")
	return append(env, extra...)
}

// startPrefork runs the test binary as prefork with these options; the worker
// command is the test binary again, in the given role. extraEnv goes to both.
func startPrefork(t *testing.T, role string, extraEnv []string, args ...string) *instance {
	t.Helper()
	return startPreforkBinary(t, []string{os.Args[0]}, role, extraEnv, args...)
}

// startPreforkBinary is startPrefork with prefork run as bin[0] (a copy of
// the test binary, or a wrapper such as unshare whose last argument is the
// copy: upgrade_test.go); the workers are the test binary itself.
func startPreforkBinary(t *testing.T, bin []string, role string, extraEnv []string, args ...string) *instance {
	t.Helper()
	in := newInstance(t)
	full := []string{"--status-file", in.status, "-v"}
	if role == "http" && !strings.Contains(strings.Join(args, " "), "--ready ") {
		full = append(full, "--ready", "notify") // the test worker says when it serves
	}
	full = append(full, args...)
	if role != "" {
		full = append(full, "--", os.Args[0])
	}
	in.cmd = exec.Command(bin[0], append(bin[1:len(bin):len(bin)], full...)...)
	in.cmd.Env = preforkEnv(role, extraEnv...)
	in.cmd.Stderr = in.stderr
	in.cmd.Stdout = in.stderr
	in.watch()
	return in
}

// watch starts in.cmd and judges its end by judgeExit; a prefork still running
// when the test ends gets SIGQUIT (its goroutines' stacks), then SIGKILL.
func (in *instance) watch() {
	t := in.t
	t.Helper()
	if err := in.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		in.cmd.Wait()
		in.code = exitStatus(in.cmd.ProcessState.Sys().(syscall.WaitStatus)) // spawn.go
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
				<-in.done
			}
		}
		out := in.stderr.String()
		judgeExit(t, out, in.code, in.waited)
		if t.Failed() {
			t.Logf("prefork stderr:\n%s", out)
		}
	})
}

// judgeExit is the rule every prefork a test runs is judged by: a race inside
// the supervisor must fail the test that provoked it, and a prefork the test
// did not expect to fail must not fail unseen (judged: the test read the exit
// status itself). It says whether it failed the test.
func judgeExit(t *testing.T, out string, code int, judged bool) bool {
	t.Helper()
	failed := false
	if strings.Contains(out, "WARNING: DATA RACE") {
		t.Errorf("the race detector found a race in prefork")
		failed = true
	}
	if !judged && code != 0 {
		t.Errorf("prefork exited with status %d", code)
		failed = true
	}
	return failed
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
		in.waited = true
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
	return in.waitFor(fmt.Sprintf("%d ready workers", n), timeout, readyWhere(n, nil))
}

// readyWhere is a waitFor condition: exactly n workers, every one ready and,
// where ok is given, passing it (a victim's replacement, a new generation).
func readyWhere(n int, ok func(workerStatus) bool) func(statusFile) bool {
	return func(st statusFile) bool {
		if len(st.Workers) != n {
			return false
		}
		for _, w := range st.Workers {
			if w.State != "ready" || ok != nil && !ok(w) {
				return false
			}
		}
		return true
	}
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

// loadInBackground runs load in a goroutine until the returned finish is
// called; finish returns what load counted.
func loadInBackground(addr string, clients int, keepAlive bool) (finish func() (total int, failed []error)) {
	stop := make(chan struct{})
	type result struct {
		total  int
		failed []error
	}
	res := make(chan result, 1)
	go func() {
		total, failed := load(addr, clients, keepAlive, stop)
		res <- result{total, failed}
	}()
	return func() (int, []error) {
		close(stop)
		r := <-res
		return r.total, r.failed
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
