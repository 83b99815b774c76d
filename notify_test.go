//go:build linux || darwin

// This file tests sd_notify end to end with real processes: --ready notify and
// its timeout, rolling reloads that wait for READY=1, STOPPING=1, STATUS=, the
// privacy of the per-worker sockets, and prefork's own notifications upward.
// The test binary plays the worker in the "notify" role (notifyWorker), whose
// behaviour the TESTWORKER_* variables below choose.
package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pw "github.com/prefork/prefork/worker"
)

// Variables that steer notifyWorker.
const (
	readyWhenEnv = "TESTWORKER_READY_WHEN" // send READY=1 only once this file exists
	marksEnv     = "TESTWORKER_MARKS"      // directory: PID.json (the worker's report), abrt.PID (got SIGABRT)
	statusEnv    = "TESTWORKER_STATUS"     // send STATUS=value once ready
	pingEnv      = "TESTWORKER_PING"       // send WATCHDOG=1 every WATCHDOG_USEC/10 until SIGUSR2
	giveUpEnv    = "TESTWORKER_GIVE_UP"    // send STOPPING=1 at once, never READY=1, exit 1 soon after
)

// notifyWorker is an HTTP worker that speaks sd_notify as the environment says.
// SIGUSR1 makes it send STOPPING=1, serve one more second and exit 1, as a
// worker does after a fatal error; SIGABRT is recorded and otherwise ignored.
func notifyWorker() int {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGABRT)
	marks := os.Getenv(marksEnv)
	rep := workerReport{PID: os.Getpid(), PPID: os.Getppid(), Env: map[string]string{}}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PREFORK_") || strings.HasPrefix(k, "WATCHDOG_") || k == "NOTIFY_SOCKET" {
			rep.Env[k] = v
		}
	}
	body, _ := json.Marshal(rep)
	if marks != "" {
		os.WriteFile(filepath.Join(marks, strconv.Itoa(rep.PID)+".json"), body, 0o644)
	}
	if os.Getenv(giveUpEnv) != "" { // a fatal error at start, announced
		sdNotify("STOPPING=1")
		time.Sleep(200 * time.Millisecond)
		return 1
	}
	ls, err := pw.Listeners()
	if err != nil {
		fmt.Fprintln(os.Stderr, "notify worker:", err)
		return 3
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) })}
	for _, l := range ls {
		go srv.Serve(l)
	}
	if f := os.Getenv(readyWhenEnv); f != "" {
		for _, err := os.Stat(f); err != nil; _, err = os.Stat(f) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	sdNotify("READY=1")
	if s := os.Getenv(statusEnv); s != "" {
		sdNotify("STATUS=" + s)
	}
	stopPing := make(chan struct{})
	if usec, _ := strconv.Atoi(os.Getenv("WATCHDOG_USEC")); usec > 0 && os.Getenv(pingEnv) != "" {
		go func() {
			t := time.NewTicker(time.Duration(usec) * time.Microsecond / 10)
			for {
				select {
				case <-stopPing:
					return
				case <-t.C:
					sdNotify("WATCHDOG=1")
				}
			}
		}()
	}
	for sig := range sigs {
		switch sig {
		case syscall.SIGUSR1:
			sdNotify("STOPPING=1")
			time.Sleep(time.Second)
			return 1
		case syscall.SIGUSR2:
			close(stopPing)
		case syscall.SIGABRT:
			if marks != "" {
				os.WriteFile(filepath.Join(marks, "abrt."+strconv.Itoa(rep.PID)), nil, 0o644)
			}
		case syscall.SIGTERM:
			srv.Close()
			return 0
		}
	}
	return 0
}

// readReport reads what a notify worker wrote about itself at start.
func readReport(t *testing.T, marks string, pid int) workerReport {
	t.Helper()
	var rep workerReport
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(marks, strconv.Itoa(pid)+".json"))
		if err == nil && json.Unmarshal(b, &rep) == nil {
			return rep
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker %d wrote no report: %v", pid, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// inSlot returns the workers of one slot, oldest generation first.
func inSlot(st statusFile, slot int) []workerStatus {
	var ws []workerStatus
	for _, w := range st.Workers {
		if w.Slot == slot {
			ws = append(ws, w)
		}
	}
	return ws
}

// waitLog waits until prefork's stderr contains s.
func (in *instance) waitLog(s string, timeout time.Duration) {
	in.t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(in.stderr.String(), s) {
		if time.Now().After(deadline) {
			in.t.Fatalf("prefork never logged %q", s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pidsServing collects the pids that answer on addr in n requests.
func pidsServing(t *testing.T, addr string, n int) map[int]bool {
	t.Helper()
	seen := map[int]bool{}
	for i := 0; i < n; i++ {
		rep, err := get(addr)
		if err != nil {
			t.Fatalf("request %d failed: %v", i, err)
		}
		seen[rep.PID] = true
	}
	return seen
}

func TestReadyNotifyTimeoutIsFailedStart(t *testing.T) {
	never := filepath.Join(t.TempDir(), "never")
	in := startPrefork(t, "notify", []string{readyWhenEnv + "=" + never}, "-l", "127.0.0.1:0", "-n", "1",
		"--ready", "notify", "--ready-timeout", "2s", "--backoff-min", "20ms", "--backoff-max", "40ms",
		"--max-restarts", "2", "--grace", "300ms") // it ignores TERM until ready: SIGKILL after --grace
	// (2s: time for the worker to catch TERM before the timeout, under -race on a busy machine)
	first := in.waitFor("a starting worker", 10*time.Second, func(st statusFile) bool { return len(st.Workers) == 1 })
	if s := first.Workers[0].State; s != "starting" {
		t.Errorf("a worker that sent no READY=1 is %q, want starting", s)
	}
	if code := in.wait(20 * time.Second); code != 1 {
		t.Fatalf("exit status %d after workers that never became ready, want 1", code)
	}
	out := in.stderr.String()
	for _, want := range []string{"worker not ready in time", "failed to start 2 times", "last exit status 137"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if pidAlive(first.Workers[0].PID) {
		t.Errorf("worker %d that was never ready still runs", first.Workers[0].PID)
	}
}

func TestReadyNotifyMakesReady(t *testing.T) {
	ready := filepath.Join(t.TempDir(), "ready")
	in := startPrefork(t, "notify", []string{readyWhenEnv + "=" + ready}, "-l", "127.0.0.1:0", "-n", "2",
		"--ready", "notify", "--ready-timeout", "60s", "--min-uptime", "0s")
	in.waitFor("two starting workers", 10*time.Second, func(st statusFile) bool { return len(st.Workers) == 2 })
	time.Sleep(500 * time.Millisecond) // alive, serving, but silent: still starting
	st, _ := in.readStatus()
	for _, w := range st.Workers {
		if w.State != "starting" {
			t.Errorf("worker %d is %q before it sent READY=1", w.PID, w.State)
		}
	}
	os.WriteFile(ready, nil, 0o644)
	now := in.readyWorkers(2, 10*time.Second)
	for i, w := range now.Workers {
		if w.PID != st.Workers[i].PID || w.Restarts != 0 {
			t.Errorf("slot %d: worker %d (restarts %d), want %d ready without a restart", w.Slot, w.PID, w.Restarts, st.Workers[i].PID)
		}
	}
}

func TestReloadWaitsForReady(t *testing.T) {
	ready := filepath.Join(t.TempDir(), "ready")
	os.WriteFile(ready, nil, 0o644)
	in := startPrefork(t, "notify", []string{readyWhenEnv + "=" + ready}, "-l", "127.0.0.1:0", "-n", "2",
		"--ready", "notify", "--ready-timeout", "60s")
	old := in.readyWorkers(2, 10*time.Second)
	os.Remove(ready) // the next generation comes up, serves, but does not say READY=1 yet
	in.signal(syscall.SIGHUP)
	st := in.waitFor("a new worker starting", 10*time.Second, func(st statusFile) bool { return len(st.Workers) == 3 })
	time.Sleep(500 * time.Millisecond)
	st, _ = in.readStatus()
	if len(st.Workers) != 3 {
		t.Fatalf("the reload did not wait for READY=1: %+v", st.Workers)
	}
	for _, w := range old.Workers {
		if !pidAlive(w.PID) {
			t.Errorf("old worker %d stopped before its replacement was ready", w.PID)
		}
	}
	for _, w := range st.Workers {
		if w.Generation == 2 && w.State != "starting" {
			t.Errorf("new worker %d is %q without READY=1", w.PID, w.State)
		}
	}
	os.WriteFile(ready, nil, 0o644)
	st = in.waitFor("generation 2 ready", 15*time.Second, readyWhere(2, func(w workerStatus) bool { return w.Generation == 2 }))
	in.waitLog("reload complete", 5*time.Second)
	for _, w := range old.Workers {
		for deadline := time.Now().Add(10 * time.Second); pidAlive(w.PID) && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
		if pidAlive(w.PID) {
			t.Errorf("old worker %d still runs after the reload", w.PID)
		}
	}
}

func TestReloadAbortsWhenNewWorkerNeverReady(t *testing.T) {
	ready := filepath.Join(t.TempDir(), "ready")
	os.WriteFile(ready, nil, 0o644)
	in := startPrefork(t, "notify", []string{readyWhenEnv + "=" + ready}, "-l", "127.0.0.1:0", "-n", "2",
		"--ready", "notify", "--ready-timeout", "3s", "--grace", "1s") // it ignores TERM until ready: SIGKILL after --grace
	old := in.readyWorkers(2, 10*time.Second)
	os.Remove(ready) // a broken deploy: the new generation never says READY=1
	in.signal(syscall.SIGHUP)
	in.waitLog("reload aborted", 10*time.Second)
	if !strings.Contains(in.stderr.String(), "worker not ready in time") {
		t.Error("the abort does not say the new worker was not ready in time")
	}
	st := in.readyWorkers(2, 10*time.Second)
	want := map[int]bool{}
	for i, w := range st.Workers {
		want[w.PID] = true
		if w.PID != old.Workers[i].PID || w.Generation != 1 {
			t.Errorf("slot %d: worker %d (generation %d), want old worker %d", w.Slot, w.PID, w.Generation, old.Workers[i].PID)
		}
	}
	for pid := range pidsServing(t, in.addr(), 50) {
		if !want[pid] {
			t.Errorf("pid %d answered; only the old workers %v should", pid, want)
		}
	}
	// Not the whole generation was tried: the reload stopped at the first failure.
	if n := strings.Count(in.stderr.String(), "worker not ready in time"); n != 1 {
		t.Errorf("%d new workers timed out, want 1 (the reload stops at the first)", n)
	}
}

func TestStoppingStartsReplacement(t *testing.T) {
	in := startPrefork(t, "notify", nil, "-l", "127.0.0.1:0", "-n", "2", "--ready", "notify",
		"--min-uptime", "30s", "--backoff-min", "10s", "--backoff-max", "10s")
	st := in.readyWorkers(2, 10*time.Second)
	victim := st.Workers[1]
	syscall.Kill(victim.PID, syscall.SIGUSR1) // it sends STOPPING=1, serves one more second, exits 1
	// The replacement starts while the old worker still runs.
	both := in.waitFor("replacement beside the stopping worker", 5*time.Second, func(st statusFile) bool {
		ws := inSlot(st, victim.Slot)
		return len(ws) == 2 && pidAlive(victim.PID)
	})
	for _, w := range inSlot(both, victim.Slot) {
		if w.PID == victim.PID && w.State != "stopping" {
			t.Errorf("the worker that sent STOPPING=1 is %q, want stopping", w.State)
		}
	}
	st = in.waitFor("the replacement alone", 15*time.Second, func(st statusFile) bool {
		ws := inSlot(st, victim.Slot)
		return len(ws) == 1 && ws[0].PID != victim.PID && ws[0].State == "ready"
	})
	w := inSlot(st, victim.Slot)[0]
	if w.Restarts != 0 {
		t.Errorf("restarts %d after STOPPING=1, want 0 (not a failed start)", w.Restarts)
	}
	if w.LastExit == nil || *w.LastExit != 1 {
		t.Errorf("last_exit %v, want 1", w.LastExit)
	}
	out := in.stderr.String()
	if strings.Contains(out, "failed to start") || strings.Contains(out, "backoff=") {
		t.Errorf("an exit announced by STOPPING=1 counted as a failed start:\n%s", out)
	}
	if !strings.Contains(out, "stopping on its own") {
		t.Error("no log line says the worker stopped on its own")
	}
	if len(in.readyWorkers(2, 5*time.Second).Workers) != 2 {
		t.Error("not two workers after the replacement")
	}
}

func TestStoppingBeforeReadyIsFailedStart(t *testing.T) {
	// A worker that announces its exit before it ever came up has still failed
	// to start: restarting it at once, without backoff and without end, would
	// be a fork storm.
	in := startPrefork(t, "notify", []string{giveUpEnv + "=1"}, "-l", "127.0.0.1:0", "-n", "1", "--ready", "notify",
		"--backoff-min", "20ms", "--backoff-max", "40ms", "--max-restarts", "3")
	if code := in.wait(20 * time.Second); code != 1 {
		t.Fatalf("exit status %d, want 1 after a crash loop of workers that sent STOPPING=1 at start", code)
	}
	if out := in.stderr.String(); !strings.Contains(out, "failed to start 3 times") {
		t.Errorf("no crash-loop message:\n%s", out)
	}
}

func TestStatusInStatusFile(t *testing.T) {
	in := startPrefork(t, "notify", []string{statusEnv + "=serving 42 clients"}, "-l", "127.0.0.1:0", "-n", "2",
		"--ready", "notify")
	in.waitFor("STATUS= of both workers", 10*time.Second, func(st statusFile) bool {
		n := 0
		for _, w := range st.Workers {
			if w.Status == "serving 42 clients" {
				n++
			}
		}
		return n == 2
	})
}

func TestNotifySocketsArePrivate(t *testing.T) {
	marks := t.TempDir()
	in := startPrefork(t, "notify", []string{marksEnv + "=" + marks}, "-l", "127.0.0.1:0", "-n", "2",
		"--ready", "notify")
	st := in.readyWorkers(2, 10*time.Second)
	a, b := readReport(t, marks, st.Workers[0].PID), readReport(t, marks, st.Workers[1].PID)
	pa, pb := a.Env["NOTIFY_SOCKET"], b.Env["NOTIFY_SOCKET"]
	if pa == "" || pa == pb {
		t.Fatalf("NOTIFY_SOCKET %q and %q: want one socket per worker", pa, pb)
	}
	if filepath.Dir(pa) != filepath.Dir(pb) {
		t.Errorf("sockets in different directories: %q, %q", pa, pb)
	}
	fi, err := os.Stat(filepath.Dir(pa))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); !fi.IsDir() || perm != 0o700 {
		t.Errorf("notify directory %s has mode %v, want a 0700 directory", filepath.Dir(pa), fi.Mode())
	}
	// A datagram on worker A's socket is A's, and nobody else's.
	send := func(path, msg string) error {
		c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte(msg))
		return err
	}
	// The test is outside A's process group: on Linux its datagram is refused
	// (TestNotifyFromOutsideIgnored tests that more closely).
	if err := send(pa, "STATUS=sent to A"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	st, _ = in.readStatus()
	if want := map[bool]string{true: "", false: "sent to A"}[notifyChecksSender]; st.Workers[0].Status != want {
		t.Errorf("worker A's status is %q after the test sent it a STATUS=; want %q", st.Workers[0].Status, want)
	}
	if st.Workers[1].Status != "" {
		t.Errorf("worker B took a datagram sent to A's socket: status %q", st.Workers[1].Status)
	}
	// Once A is gone its socket is gone: nothing A left behind can speak for
	// A's replacement, which gets a new path.
	syscall.Kill(a.PID, syscall.SIGKILL)
	st = in.waitFor("A's replacement", 10*time.Second, func(st statusFile) bool {
		ws := inSlot(st, 0)
		return len(ws) == 1 && ws[0].PID != a.PID && ws[0].State == "ready"
	})
	if err := send(pa, "READY=1"); err == nil {
		t.Errorf("A's old socket %s still takes datagrams after A died", pa)
	}
	if _, err := os.Stat(pa); err == nil {
		t.Errorf("A's old socket %s still exists after A died", pa)
	}
	if c := readReport(t, marks, inSlot(st, 0)[0].PID).Env["NOTIFY_SOCKET"]; c == pa || c == pb {
		t.Errorf("the replacement got a socket path already used: %q", c)
	}
}
