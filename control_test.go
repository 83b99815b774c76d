//go:build linux || darwin

// This file tests the control socket and the `prefork --ctl` client end to end:
// a real prefork (startPrefork) with --control, the client run in-process
// through run(), every command, the reload outcomes, the client's errors and
// exit statuses, a client that says nothing, and --metrics-file.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func init() {
	extraRoles["rrhold"] = rrHoldWorker
}

// rrHoldWorker in slot 0 takes rr connections and never acks them (it never
// reads its channel); in any other slot it is the ordinary HTTP worker.
func rrHoldWorker() int {
	if os.Getenv("PREFORK_WORKER") == "0" {
		time.Sleep(time.Minute)
		return 0
	}
	return testWorker("http")
}

// ctl runs `prefork --ctl sock args...` and returns its exit status and output.
func ctl(sock string, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(append([]string{"--ctl", sock}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// mustCtl runs a control command that must succeed.
func mustCtl(t *testing.T, sock string, args ...string) string {
	t.Helper()
	code, out, errs := ctl(sock, args...)
	if code != 0 {
		t.Fatalf("prefork --ctl %s %s: exit %d\nstdout: %s\nstderr: %s", sock, strings.Join(args, " "), code, out, errs)
	}
	return out
}

func ctlSock(t *testing.T) string { return filepath.Join(t.TempDir(), "ctl.sock") }

func TestControlCommands(t *testing.T) {
	sock := ctlSock(t)
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "2", "--control", sock)
	st := in.readyWorkers(2, 10*time.Second)

	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("control socket mode %v, want a socket with 0600", fi.Mode())
	}

	// status: a table a person reads.
	out := mustCtl(t, sock, "status")
	for _, want := range []string{fmt.Sprintf("prefork pid %d, mode shared, generation 1", in.cmd.Process.Pid),
		"listeners: 127.0.0.1:", "SLOT", "RESTARTS", "LAST EXIT", "RSS", "CPU"} {
		if !strings.Contains(out, want) {
			t.Errorf("status table lacks %q:\n%s", want, out)
		}
	}
	for _, w := range st.Workers {
		if !strings.Contains(out, fmt.Sprintf("%d  %d  1  ready", w.Slot, w.PID)) && !regexpLine(out, w.Slot, w.PID) {
			t.Errorf("status table has no line for slot %d pid %d:\n%s", w.Slot, w.PID, out)
		}
	}

	// status --json: the same as JSON, with memory and CPU where they can be read.
	var js ctlStatus
	if err := json.Unmarshal([]byte(mustCtl(t, sock, "status", "--json")), &js); err != nil {
		t.Fatal(err)
	}
	if js.PID != in.cmd.Process.Pid || js.Mode != "shared" || js.Generation != 1 || len(js.Workers) != 2 || len(js.Listeners) != 1 {
		t.Errorf("status --json: %+v", js)
	}
	for _, w := range js.Workers {
		if runtime.GOOS == "linux" && (w.RSS == nil || *w.RSS <= 0 || w.CPU == nil) {
			t.Errorf("slot %d: no RSS or CPU in status --json", w.Slot)
		}
	}

	// metrics: strict Prometheus text.
	samples, _, err := parseProm(mustCtl(t, sock, "metrics"))
	if err != nil {
		t.Fatal(err)
	}
	if v := promValue(t, samples, "prefork_workers", "state", "ready"); v != 2 {
		t.Errorf("prefork_workers{state=ready} = %v, want 2", v)
	}
	if runtime.GOOS == "linux" {
		if n := len(samples["prefork_worker_resident_memory_bytes"]); n != 2 {
			t.Errorf("%d RSS samples, want 2", n)
		}
		if n := len(samples["prefork_listen_queue_length"]); n != 1 {
			t.Errorf("%d listen queue samples, want 1", n)
		}
	}

	// scale up waits until the new workers are up; scale down until N remain.
	if out := mustCtl(t, sock, "scale", "3"); !strings.Contains(out, "3 workers up") {
		t.Errorf("scale 3: %q", out)
	}
	in.waitFor("3 ready workers", time.Second, func(st statusFile) bool { return countState(st, stateReady) == 3 })
	mustCtl(t, sock, "scale", "1")
	in.readyWorkers(1, 35*time.Second)

	// reload waits for the new generation.
	if out := mustCtl(t, sock, "reload"); !strings.Contains(out, "generation 2") {
		t.Errorf("reload: %q", out)
	}
	in.waitFor("generation 2 ready", time.Second, func(st statusFile) bool {
		for _, w := range st.Workers {
			if w.Generation == 2 && w.State == stateReady {
				return true
			}
		}
		return false
	})
	if v := promValue(t, mustProm(t, sock), "prefork_reloads_total"); v != 1 {
		t.Errorf("prefork_reloads_total = %v, want 1", v)
	}

	// stop returns once prefork has exited.
	mustCtl(t, sock, "stop")
	if _, err := os.Lstat(sock); err == nil {
		t.Error("the control socket is still there when stop returned")
	}
	if code := in.wait(5 * time.Second); code != 0 {
		t.Errorf("prefork exited %d after stop, want 0", code)
	}
}

// regexpLine reports whether the table has a line for this slot and pid.
func regexpLine(table string, slot, pid int) bool {
	for _, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[0] == strconv.Itoa(slot) && f[1] == strconv.Itoa(pid) {
			return true
		}
	}
	return false
}

func countState(st statusFile, state string) int {
	n := 0
	for _, w := range st.Workers {
		if w.State == state {
			n++
		}
	}
	return n
}

func mustProm(t *testing.T, sock string) map[string][]promSample {
	t.Helper()
	samples, _, err := parseProm(mustCtl(t, sock, "metrics"))
	if err != nil {
		t.Fatal(err)
	}
	return samples
}

// A reload whose new workers never say READY=1 is abandoned: the client exits 1
// within the ready timeout, names the slot, and the old workers still serve.
func TestControlReloadAbandoned(t *testing.T) {
	sock := ctlSock(t)
	ready := filepath.Join(t.TempDir(), "ready")
	os.WriteFile(ready, nil, 0o644)
	in := startPrefork(t, "notify", []string{readyWhenEnv + "=" + ready}, "-l", "127.0.0.1:0", "-n", "2",
		"--ready", "notify", "--ready-timeout", "2s", "--grace", "1s", "--control", sock)
	old := in.readyWorkers(2, 10*time.Second)
	os.Remove(ready) // a broken deploy: the new generation never says READY=1

	start := time.Now()
	code, out, errs := ctl(sock, "reload")
	took := time.Since(start)
	if code != 1 {
		t.Fatalf("reload of a generation that never gets ready: exit %d, want 1\n%s%s", code, out, errs)
	}
	if took > 2*time.Second+3*time.Second {
		t.Errorf("the abandoned reload took %v to report; the ready timeout is 2s", took)
	}
	if !strings.Contains(errs, "slot 0") || !strings.Contains(errs, "abandoned") || !strings.Contains(errs, "not ready within 2s") {
		t.Errorf("the message does not say which slot and why: %q", errs)
	}
	// The new worker (which listens before it would say READY=1) is stopped
	// within --grace; then only the old ones serve.
	in.readyWorkers(2, 10*time.Second)
	want := map[int]bool{}
	for _, w := range old.Workers {
		want[w.PID] = true
	}
	for pid := range pidsServing(t, in.addr(), 30) {
		if !want[pid] {
			t.Errorf("pid %d answered; only the old workers %v should", pid, want)
		}
	}
	if v := promValue(t, mustProm(t, sock), "prefork_reload_failures_total"); v != 1 {
		t.Errorf("prefork_reload_failures_total = %v, want 1", v)
	}
}

// Two clients asking for a reload at once get the same reload.
func TestControlReloadJoins(t *testing.T) {
	sock := ctlSock(t)
	ready := filepath.Join(t.TempDir(), "ready")
	os.WriteFile(ready, nil, 0o644)
	in := startPrefork(t, "notify", []string{readyWhenEnv + "=" + ready}, "-l", "127.0.0.1:0", "-n", "2",
		"--ready", "notify", "--control", sock)
	in.readyWorkers(2, 10*time.Second)
	os.Remove(ready) // hold the new generation until both clients wait

	type result struct {
		code     int
		out, err string
	}
	results := make(chan result, 2)
	ask := func() {
		code, out, errs := ctl(sock, "reload", "--timeout", "30s")
		results <- result{code, out, errs}
	}
	go ask()
	in.waitFor("a generation 2 worker starting", 10*time.Second, func(st statusFile) bool {
		for _, w := range st.Workers {
			if w.Generation == 2 {
				return true
			}
		}
		return false
	})
	go ask()
	time.Sleep(300 * time.Millisecond) // let the second client's request arrive
	os.WriteFile(ready, nil, 0o644)
	for i := 0; i < 2; i++ {
		r := <-results
		if r.code != 0 || !strings.Contains(r.out, "generation 2") {
			t.Errorf("client %d: exit %d, %q %q; want 0 and generation 2", i, r.code, r.out, r.err)
		}
	}
	st := in.readyWorkers(2, 10*time.Second)
	if st.Generation != 2 {
		t.Errorf("generation %d after two clients asked at once, want 2 (one reload)", st.Generation)
	}
}

// A client that connects and says nothing delays neither a HUP reload nor a
// restart, nor other clients; it is dropped after the request timeout.
func TestControlStuckClient(t *testing.T) {
	sock := ctlSock(t)
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "1", "--control", sock, "--min-uptime", "0")
	old := in.readyWorkers(1, 10*time.Second)
	stuck, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	connected := time.Now()

	in.signal(syscall.SIGHUP)
	st := in.waitFor("the reload", 3*time.Second, func(st statusFile) bool {
		return len(st.Workers) == 1 && st.Workers[0].Generation == 2 && st.Workers[0].State == stateReady
	})
	syscall.Kill(st.Workers[0].PID, syscall.SIGKILL)
	in.waitFor("the restart", 3*time.Second, func(s statusFile) bool {
		return len(s.Workers) == 1 && s.Workers[0].PID != st.Workers[0].PID && s.Workers[0].State == stateReady
	})
	mustCtl(t, sock, "status")
	if time.Since(connected) >= ctlRequestTimeout {
		t.Fatalf("the test took %v; it must finish before the stuck client is dropped", time.Since(connected))
	}
	_ = old

	// The stuck client is told why and dropped.
	stuck.SetReadDeadline(time.Now().Add(ctlRequestTimeout + 5*time.Second))
	b := make([]byte, 512)
	n, _ := stuck.Read(b)
	if !strings.Contains(string(b[:n]), "no request within") {
		t.Errorf("the stuck client got %q", b[:n])
	}
}

func TestControlClientErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.sock")
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"status"}, 1, "does not exist"},
		{[]string{"frobnicate"}, 2, `unknown control command "frobnicate"`},
		{[]string{"scale"}, 2, "needs the number of workers"},
		{[]string{"scale", "0"}, 2, "not a number of workers"},
		{[]string{"reload", "--timeout", "soon"}, 2, "invalid value for --timeout"},
		{[]string{"status", "--bogus"}, 2, "unexpected argument"},
	}
	for _, c := range cases {
		code, _, errs := ctl(missing, c.args...)
		if code != c.code || !strings.Contains(errs, c.want) {
			t.Errorf("--ctl %v: exit %d %q; want %d and %q", c.args, code, errs, c.code, c.want)
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"--ctl", missing}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "needs a command") {
		t.Errorf("--ctl with no command: exit %d %q", code, errb.String())
	}

	// A stale socket file: nothing accepts.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	if code, _, errs := ctl(stale, "status"); code != 1 || !strings.Contains(errs, "nothing answers") {
		t.Errorf("stale socket: exit %d %q", code, errs)
	}

	// A socket that is not prefork's.
	other := filepath.Join(dir, "other.sock")
	ol, err := net.Listen("unix", other)
	if err != nil {
		t.Fatal(err)
	}
	defer ol.Close()
	go func() {
		for {
			c, err := ol.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("220 smtp.example ESMTP\n"))
			c.Read(make([]byte, 512))
			c.Close()
		}
	}()
	if code, _, errs := ctl(other, "status"); code != 1 || !strings.Contains(errs, "does not answer as prefork's control socket") {
		t.Errorf("foreign socket: exit %d %q", code, errs)
	}
}

// The reload's wait: a timeout exits 3 and leaves the reload going; prefork
// going away before the outcome exits 1.
func TestControlReloadTimeoutAndPreforkGone(t *testing.T) {
	sock := ctlSock(t)
	ready := filepath.Join(t.TempDir(), "ready")
	os.WriteFile(ready, nil, 0o644)
	in := startPrefork(t, "notify", []string{readyWhenEnv + "=" + ready}, "-l", "127.0.0.1:0", "-n", "1",
		"--ready", "notify", "--ready-timeout", "60s", "--grace", "2s", "--control", sock)
	in.readyWorkers(1, 10*time.Second)
	os.Remove(ready)

	start := time.Now()
	code, _, errs := ctl(sock, "reload", "--timeout", "300ms")
	if code != exitTimeout || !strings.Contains(errs, "goes on in prefork") {
		t.Errorf("reload --timeout 300ms: exit %d %q; want %d", code, errs, exitTimeout)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("reload --timeout 300ms took %v", d)
	}
	if st, _ := in.readStatus(); len(st.Workers) != 2 {
		t.Errorf("the reload does not go on after the client's timeout: %+v", st)
	}

	done := make(chan string, 1)
	go func() {
		code, _, errs := ctl(sock, "reload") // joins the reload under way
		done <- fmt.Sprintf("%d %s", code, errs)
	}()
	time.Sleep(300 * time.Millisecond)
	in.signal(syscall.SIGTERM)
	select {
	case r := <-done:
		if !strings.HasPrefix(r, "1 ") || !strings.Contains(r, "stopping") {
			t.Errorf("reload while prefork stops: %q; want exit 1 saying prefork is stopping", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the reload client still waits after prefork stopped")
	}
	in.wait(10 * time.Second)
	if code, _, errs := ctl(sock, "status"); code != 1 {
		t.Errorf("status after prefork exited: exit %d %q, want 1", code, errs)
	}
}

// prefork killed outright during a reload: the client exits 1.
func TestControlPreforkKilledMidReload(t *testing.T) {
	if !hasPdeathsig {
		t.Skip("without a parent-death signal the workers would outlive the killed prefork")
	}
	sock := ctlSock(t)
	ready := filepath.Join(t.TempDir(), "ready")
	os.WriteFile(ready, nil, 0o644)
	in := startPrefork(t, "notify", []string{readyWhenEnv + "=" + ready}, "-l", "127.0.0.1:0", "-n", "1",
		"--ready", "notify", "--control", sock)
	in.readyWorkers(1, 10*time.Second)
	os.Remove(ready)
	done := make(chan string, 1)
	go func() {
		code, _, errs := ctl(sock, "reload")
		done <- fmt.Sprintf("%d %s", code, errs)
	}()
	in.waitFor("the new worker", 10*time.Second, func(st statusFile) bool { return len(st.Workers) == 2 })
	time.Sleep(100 * time.Millisecond)
	in.signal(syscall.SIGKILL)
	select {
	case r := <-done:
		if !strings.HasPrefix(r, "1 ") || !strings.Contains(r, "closed the connection before the outcome") {
			t.Errorf("reload when prefork is killed: %q; want exit 1", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the reload client still waits after prefork was killed")
	}
	in.wait(10 * time.Second)
}

// A stale control socket file is replaced; a live one makes a second prefork exit 1.
func TestControlSocketStaleAndLive(t *testing.T) {
	sock := ctlSock(t)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "1", "--control", sock)
	in.readyWorkers(1, 10*time.Second)
	mustCtl(t, sock, "status")

	second := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "1", "--control", sock)
	if code := second.wait(10 * time.Second); code != 1 {
		t.Errorf("a second prefork on a live control socket exited %d, want 1", code)
	}
	if !strings.Contains(second.stderr.String(), "--control "+sock) {
		t.Errorf("the error does not name the control socket: %s", second.stderr.String())
	}
	mustCtl(t, sock, "status") // the first one's socket is untouched
}

func TestMetricsFile(t *testing.T) {
	mf := filepath.Join(t.TempDir(), "prefork.prom")
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "2", "--metrics-file", mf)
	in.readyWorkers(2, 10*time.Second)
	deadline := time.Now().Add(metricsInterval + 5*time.Second)
	for {
		b, err := os.ReadFile(mf)
		if err == nil {
			samples, _, perr := parseProm(string(b))
			if perr != nil {
				t.Fatalf("metrics file: %v\n%s", perr, b)
			}
			if len(samples["prefork_workers"]) == 3 && promValue(t, samples, "prefork_workers", "state", "ready") == 2 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the metrics file never showed 2 ready workers (last read: %v)", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if fi, err := os.Stat(mf); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("metrics file mode: %v %v, want 0644 (node_exporter reads it)", fi, err)
	}
	in.signal(syscall.SIGTERM)
	in.wait(10 * time.Second)
	if _, err := os.Stat(mf); err == nil {
		t.Error("the metrics file outlived prefork")
	}
}

func TestControlMetricsRR(t *testing.T) {
	sock := ctlSock(t)
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "2", "--mode", "rr", "--control", sock)
	in.readyWorkers(2, 10*time.Second)
	addr := in.addr()
	for i := 0; i < 20; i++ {
		if _, err := get(addr); err != nil {
			t.Fatal(err)
		}
	}
	// A worker's last ack may still be on its way to prefork.
	deadline := time.Now().Add(5 * time.Second)
	samples := mustProm(t, sock)
	for promValue(t, samples, "prefork_rr_connections_acked_total") < 20 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		samples = mustProm(t, sock)
	}
	if v := promValue(t, samples, "prefork_rr_connections_handed_total"); v < 20 {
		t.Errorf("handed %v, want at least 20", v)
	}
	if v := promValue(t, samples, "prefork_rr_connections_acked_total"); v < 20 {
		t.Errorf("acked %v, want at least 20", v)
	}
	if n := len(samples["prefork_rr_connections_inflight"]); n != 2 {
		t.Errorf("%d in-flight samples, want one per worker", n)
	}
	if out := mustCtl(t, sock, "status"); !strings.Contains(out, "RR INFLIGHT/ACKED") {
		t.Errorf("the rr status table has no rr column:\n%s", out)
	}
}

// A scale up whose new worker cannot start exits 1 and says why; prefork keeps
// retrying, and the slot comes up once the worker can start.
func TestControlScaleFails(t *testing.T) {
	sock := ctlSock(t)
	broken := filepath.Join(t.TempDir(), "broken")
	in := startPrefork(t, "http", []string{"TESTWORKER_FAIL_IF=" + broken}, "-l", "127.0.0.1:0", "-n", "1",
		"--control", sock, "--backoff-min", "500ms", "--backoff-max", "500ms")
	in.readyWorkers(1, 10*time.Second)
	os.WriteFile(broken, nil, 0o644) // new workers exit 4 at start
	code, out, errs := ctl(sock, "scale", "2", "--timeout", "20s")
	if code != 1 || !strings.Contains(errs, "slot 1") || !strings.Contains(errs, "status 4") {
		t.Fatalf("scale 2 with a worker that cannot start: exit %d %q %q; want 1, slot 1, status 4", code, out, errs)
	}
	os.Remove(broken)
	in.readyWorkers(2, 10*time.Second)
	if out := mustCtl(t, sock, "scale", "2"); !strings.Contains(out, "2 workers up") {
		t.Errorf("scale 2 once the slot is up: %q", out)
	}
}

// stop --timeout: a worker that ignores the stop signal outlasts the wait; the
// client exits 3 and prefork still stops after --grace.
func TestControlStopTimeout(t *testing.T) {
	sock := ctlSock(t)
	in := startPrefork(t, "http", []string{"TESTWORKER_IGNORE_TERM=1"}, "-l", "127.0.0.1:0", "-n", "1",
		"--control", sock, "--grace", "2s")
	in.readyWorkers(1, 10*time.Second)
	code, _, errs := ctl(sock, "stop", "--timeout", "300ms")
	if code != exitTimeout || !strings.Contains(errs, "still runs") {
		t.Errorf("stop --timeout 300ms with a worker ignoring TERM: exit %d %q; want %d", code, errs, exitTimeout)
	}
	if code := in.wait(10 * time.Second); code != 0 {
		t.Errorf("prefork exited %d, want 0", code)
	}
}

// With an elastic pool, scale stays within -n MIN:MAX, as TTIN and TTOU do.
func TestControlScaleWithinPoolBounds(t *testing.T) {
	sock := ctlSock(t)
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "1:3", "--control", sock)
	in.readyWorkers(1, 10*time.Second)
	if code, _, errs := ctl(sock, "scale", "5"); code != 1 || !strings.Contains(errs, "give 1 to 3") {
		t.Errorf("scale 5 with -n 1:3: exit %d %q; want 1 and the bounds", code, errs)
	}
	if out := mustCtl(t, sock, "scale", "3"); !strings.Contains(out, "3 workers up") {
		t.Errorf("scale 3 with -n 1:3: %q", out)
	}
}

// rr: connections a worker held unacked when it died go to another worker, and
// the metrics count them as redistributed.
func TestControlMetricsRedistributed(t *testing.T) {
	sock := ctlSock(t)
	in := startPrefork(t, "rrhold", nil, "-l", "127.0.0.1:0", "-n", "2", "--mode", "rr",
		"--ready", "delay", "--ready-delay", "300ms", "--control", sock)
	st := in.readyWorkers(2, 10*time.Second)
	addr := in.addr()
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		go func() { _, err := get(addr); errs <- err }()
	}
	holder := st.Workers[0].PID
	deadline := time.Now().Add(5 * time.Second)
	for promValue(t, mustProm(t, sock), "prefork_rr_connections_inflight", "pid", strconv.Itoa(holder)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("slot 0 never held a connection")
		}
		time.Sleep(20 * time.Millisecond)
	}
	syscall.Kill(holder, syscall.SIGKILL)
	for i := 0; i < 4; i++ {
		if err := <-errs; err != nil {
			t.Errorf("request %d: %v (a connection the dead worker held was lost)", i, err)
		}
	}
	if v := promValue(t, mustProm(t, sock), "prefork_rr_connections_redistributed_total"); v < 1 {
		t.Errorf("redistributed %v, want at least 1", v)
	}
}
