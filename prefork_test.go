//go:build linux || darwin

// This file tests the supervisor's core end to end (e2e_test.go holds the
// harness): workers sharing a port, what each inherits, restarts in the same
// slot, crash loops and backoff, stop, reload, scaling, rr mode, Python
// workers, bind failures and the demo worker.
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const (
	roleEnv   = "PREFORK_TEST_AS" // "prefork": the test binary is prefork (PREFORK_* never reaches workers)
	workerEnv = "TESTWORKER"      // the worker's behaviour: http, exit:N
)

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
	// Keep requesting while the worker dies: the port must never stop
	// answering. In shared mode the request the victim had accepted when it
	// was killed dies with it (rr mode is what keeps those); one that starts
	// once the victim is gone must be answered.
	stop := make(chan struct{})
	errs := make(chan error, 1)
	var killed atomic.Int64 // unix nanoseconds, once the victim is dead
	go func() {
		defer close(errs)
		for i := 0; i < 2000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now().UnixNano()
			if _, err := get(addr); err != nil {
				if k := killed.Load(); k == 0 || start < k {
					continue // in flight at the kill
				}
				errs <- err
				return
			}
		}
	}()
	syscall.Kill(victim.PID, syscall.SIGKILL)
	for deadline := time.Now().Add(5 * time.Second); pidAlive(victim.PID) && time.Now().Before(deadline); { // until prefork reaps it
		time.Sleep(time.Millisecond)
	}
	killed.Store(time.Now().UnixNano())
	st = in.waitFor("replacement", 10*time.Second, func(st statusFile) bool {
		for _, w := range st.Workers {
			if w.Slot == victim.Slot && w.PID != victim.PID && w.State == "ready" {
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

// In rr mode a dying worker's channel closes a moment before the reaper reports
// its exit; that end of file must not turn the crash into a replacement that
// counts nothing. A worker that is up, then exits within --min-uptime, is a
// failed start in every mode: --max-restarts 3 means three starts. (The worker
// closes its channel 50 ms before it exits, so that the end of file always
// comes first; prefork's stop signal then ends it.)
func TestRRCrashLoopCountsEveryStart(t *testing.T) {
	in := startPrefork(t, "", nil, "--mode", "rr", "-l", "127.0.0.1:0", "-n", "1", "--ready-delay", "100ms",
		"--min-uptime", "5s", "--backoff-min", "20ms", "--backoff-max", "40ms", "--max-restarts", "3",
		"--", "sh", "-c", "sleep 0.4; exec 3>&-; sleep 0.05; exit 3") // the end of file comes first
	if code := in.wait(30 * time.Second); code != 1 {
		t.Fatalf("exit status %d after a crash loop, want 1", code)
	}
	out := in.stderr.String()
	if n := strings.Count(out, "worker started"); n != 3 {
		t.Errorf("%d workers started, want 3 (--max-restarts 3):\n%s", n, out)
	}
	if !strings.Contains(out, "crash loop") {
		t.Errorf("no crash-loop message:\n%s", out)
	}
}

func TestCrashLoopGivesUp(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	in := startPrefork(t, "exit:3", nil, "-l", "127.0.0.1:0", "-l", "unix:"+sock, "-n", "1", "--backoff-min", "20ms",
		"--backoff-max", "200ms", "--max-restarts", "4")
	if code := in.wait(20 * time.Second); code != 1 {
		t.Fatalf("exit status %d after a crash loop, want 1", code)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("the unix socket file outlived prefork's exit: %v", err)
	}
	if _, err := os.Stat(in.status); !os.IsNotExist(err) {
		t.Errorf("the status file outlived prefork's exit: %v", err)
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
		t.Logf("prefork stderr:\n%s", out)
		t.Fatalf("saw %d backoff delays, want 3 (4 failed starts, the last gives up): %v", len(delays), delays)
	}
	for i := 1; i < len(delays); i++ {
		if delays[i] <= delays[i-1] {
			t.Errorf("backoff did not grow: %v", delays)
		}
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
	finish := loadInBackground(addr, 4, keepAlive)
	time.Sleep(200 * time.Millisecond)
	in.signal(syscall.SIGHUP)
	in.waitFor("generation 2 ready", 15*time.Second, func(s statusFile) bool {
		if len(s.Workers) != 2 {
			return false
		}
		for _, w := range s.Workers {
			if w.Generation != 2 || w.State != "ready" {
				return false
			}
		}
		return true
	})
	time.Sleep(200 * time.Millisecond)
	total, failed := finish()
	if len(failed) > 0 {
		t.Errorf("%d of %d requests failed during a reload; first: %v", len(failed), total, failed[0])
	}
	if total < 20 {
		t.Errorf("only %d requests ran during the reload", total)
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
			for _, k := range []string{"LISTEN_FDS", "SERVER_STARTER_PORT"} {
				if _, ok := rep.Env[k]; ok {
					t.Errorf("%s is set in rr mode", k)
				}
			}
			if got := rep.Env["LISTEN_PID"]; got != strconv.Itoa(rep.PID) { // every worker
				t.Errorf("rr worker's LISTEN_PID=%q, want its pid %d", got, rep.PID)
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
