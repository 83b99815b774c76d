//go:build linux || darwin

// This file tests the control socket and the `prefork --ctl` client end to end:
// a real prefork (startPrefork) with --control, the client run in-process
// through run(), every command, the reload and scale outcomes; and the server
// against clients that say nothing, too much or half-close, and stale and live
// socket files. The client's errors and exit statuses are in ctl_test.go, the
// metrics (and --metrics-file) in status_test.go.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prefork/prefork/internal/ctl"
)

// ctlCall runs `prefork --ctl sock args...` and returns its exit status and output.
func ctlCall(sock string, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(append([]string{"--ctl", sock}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// mustCtl runs a control command that must succeed.
func mustCtl(t *testing.T, sock string, args ...string) string {
	t.Helper()
	code, out, errs := ctlCall(sock, args...)
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
	in.waitFor("3 ready workers", time.Second, func(st statusFile) bool { return countState(st, "ready") == 3 })
	mustCtl(t, sock, "scale", "1")
	in.readyWorkers(1, 35*time.Second)

	// reload waits for the new generation.
	if out := mustCtl(t, sock, "reload"); !strings.Contains(out, "generation 2") {
		t.Errorf("reload: %q", out)
	}
	in.waitFor("generation 2 ready", time.Second, func(st statusFile) bool {
		for _, w := range st.Workers {
			if w.Generation == 2 && w.State == "ready" {
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

// startHeldReload starts prefork with n "notify" workers, the extra options
// and --control sock, and waits until they are ready; then it removes their
// ready file, so that workers started from then on (a reload's) do not say
// READY=1 until the test writes the file (its path is returned) again.
func startHeldReload(t *testing.T, sock string, n int, extra ...string) (*instance, statusFile, string) {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready")
	os.WriteFile(ready, nil, 0o644)
	args := append([]string{"-l", "127.0.0.1:0", "-n", strconv.Itoa(n), "--ready", "notify"}, extra...)
	in := startPrefork(t, "notify", []string{readyWhenEnv + "=" + ready}, append(args, "--control", sock)...)
	st := in.readyWorkers(n, 10*time.Second)
	os.Remove(ready)
	return in, st, ready
}

// A reload whose new workers never say READY=1 is abandoned: the client exits 1
// within the ready timeout, names the slot, and the old workers still serve.
func TestControlReloadAbandoned(t *testing.T) {
	sock := ctlSock(t)
	// A broken deploy: the new generation never says READY=1.
	in, old, _ := startHeldReload(t, sock, 2, "--ready-timeout", "2s", "--grace", "1s")

	start := time.Now()
	code, out, errs := ctlCall(sock, "reload")
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
	in, _, ready := startHeldReload(t, sock, 2) // hold the new generation until both clients wait

	type result struct {
		code     int
		out, err string
	}
	results := make(chan result, 2)
	ask := func() {
		code, out, errs := ctlCall(sock, "reload", "--timeout", "30s")
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

// A scale up whose new worker cannot start exits 1 and says why; prefork keeps
// retrying, and the slot comes up once the worker can start.
func TestControlScaleFails(t *testing.T) {
	sock := ctlSock(t)
	broken := filepath.Join(t.TempDir(), "broken")
	in := startPrefork(t, "http", []string{"TESTWORKER_FAIL_IF=" + broken}, "-l", "127.0.0.1:0", "-n", "1",
		"--control", sock, "--backoff-min", "500ms", "--backoff-max", "500ms")
	in.readyWorkers(1, 10*time.Second)
	os.WriteFile(broken, nil, 0o644) // new workers exit 4 at start
	code, out, errs := ctlCall(sock, "scale", "2", "--timeout", "20s")
	if code != 1 || !strings.Contains(errs, "slot 1") || !strings.Contains(errs, "status 4") {
		t.Fatalf("scale 2 with a worker that cannot start: exit %d %q %q; want 1, slot 1, status 4", code, out, errs)
	}
	os.Remove(broken)
	in.readyWorkers(2, 10*time.Second)
	if out := mustCtl(t, sock, "scale", "2"); !strings.Contains(out, "2 workers up") {
		t.Errorf("scale 2 once the slot is up: %q", out)
	}
}

// With an elastic pool, scale stays within -n MIN:MAX, as TTIN and TTOU do.
func TestControlScaleWithinPoolBounds(t *testing.T) {
	sock := ctlSock(t)
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "1:3", "--control", sock)
	in.readyWorkers(1, 10*time.Second)
	if code, _, errs := ctlCall(sock, "scale", "5"); code != 1 || !strings.Contains(errs, "give 1 to 3") {
		t.Errorf("scale 5 with -n 1:3: exit %d %q; want 1 and the bounds", code, errs)
	}
	if out := mustCtl(t, sock, "scale", "3"); !strings.Contains(out, "3 workers up") {
		t.Errorf("scale 3 with -n 1:3: %q", out)
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
		return len(st.Workers) == 1 && st.Workers[0].Generation == 2 && st.Workers[0].State == "ready"
	})
	syscall.Kill(st.Workers[0].PID, syscall.SIGKILL)
	in.waitFor("the restart", 3*time.Second, func(s statusFile) bool {
		return len(s.Workers) == 1 && s.Workers[0].PID != st.Workers[0].PID && s.Workers[0].State == "ready"
	})
	mustCtl(t, sock, "status")
	if time.Since(connected) >= ctl.RequestTimeout {
		t.Fatalf("the test took %v; it must finish before the stuck client is dropped", time.Since(connected))
	}
	_ = old

	// The stuck client is told why and dropped.
	stuck.SetReadDeadline(time.Now().Add(ctl.RequestTimeout + 5*time.Second))
	b := make([]byte, 512)
	n, _ := stuck.Read(b)
	if !strings.Contains(string(b[:n]), "no request within") {
		t.Errorf("the stuck client got %q", b[:n])
	}
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

// A request longer than the control socket takes is answered "too long", not
// with what a JSON parser makes of its first 64 KB.
func TestControlRequestTooLong(t *testing.T) {
	sock := ctlSock(t)
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "1", "--control", sock)
	in.readyWorkers(1, 10*time.Second)
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go c.Write([]byte(`{"cmd":"status","pad":"` + strings.Repeat("x", ctl.MaxRequest) + "\"}\n"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 512)
	n, _ := c.Read(b)
	if !strings.Contains(string(b[:n]), "request too long") {
		t.Errorf("a 64 KB request got %q", b[:n])
	}
	mustCtl(t, sock, "status") // and prefork still answers
}

// A half-close ends the request, not the conversation (nc -N): a client that
// shuts down its side after the request, with or without the newline, gets
// its answer; a half-closed stop gets its answer and prefork then stops.
func TestControlHalfClose(t *testing.T) {
	sock := ctlSock(t)
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "1", "--control", sock)
	in.readyWorkers(1, 10*time.Second)
	ask := func(req string) string {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte(req))
		c.(*net.UnixConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(c)
		return string(b)
	}
	for i := 0; i < 20; i++ {
		for _, req := range []string{`{"cmd":"status"}` + "\n", `{"cmd":"metrics"}`} {
			if got := ask(req); !strings.HasPrefix(got, `{"server":"prefork","ok":true,`) {
				t.Fatalf("try %d: a half-closed %q got %q", i, req, got)
			}
		}
	}
	if got := ask(`{"cmd":"stop"}`); got != `{"server":"prefork","ok":true,"message":"stopping"}`+"\n" {
		t.Errorf("a half-closed stop got %q", got)
	}
	if code := in.wait(10 * time.Second); code != 0 {
		t.Errorf("prefork exited %d after a half-closed stop, want 0", code)
	}
}
