//go:build linux || darwin

// This file tests prefork's own sd_notify to its supervisor: READY=1 once the
// first generation is up, RELOADING=1 and READY=1 around a reload, STOPPING=1,
// STATUS=, and that no worker ever sees the parent's NOTIFY_SOCKET.
package main

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// upstreamListener is a unixgram socket that plays prefork's own supervisor
// (systemd): it collects every datagram prefork sends.
type upstreamListener struct {
	path string
	mu   sync.Mutex
	msgs []string
}

func listenUpstream(t *testing.T) *upstreamListener {
	t.Helper()
	u := &upstreamListener{path: filepath.Join(t.TempDir(), "notify")}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: u.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			u.mu.Lock()
			u.msgs = append(u.msgs, string(buf[:n]))
			u.mu.Unlock()
		}
	}()
	return u
}

func parseNotifyLine(msg, kv string) bool {
	k, v, _ := strings.Cut(kv, "=")
	got, ok := parseNotify([]byte(msg))[k]
	return ok && got == v
}

func TestUpstreamNotify(t *testing.T) {
	u := listenUpstream(t)
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready")
	in := startPrefork(t, "notify", []string{"NOTIFY_SOCKET=" + u.path, readyWhenEnv + "=" + ready, marksEnv + "=" + dir},
		"-l", "127.0.0.1:0", "-n", "2", "--ready", "notify")
	st := in.waitFor("two starting workers", 10*time.Second, func(st statusFile) bool { return len(st.Workers) == 2 })
	time.Sleep(300 * time.Millisecond)
	if n := u.count("READY=1"); n != 0 {
		t.Fatalf("prefork sent READY=1 before its workers were up: %q", u.messages())
	}
	for _, w := range st.Workers {
		if n := readReport(t, dir, w.PID).Env["NOTIFY_SOCKET"]; n == u.path || n == "" {
			t.Errorf("worker %d has NOTIFY_SOCKET=%q, want its own socket, never prefork's", w.PID, n)
		}
	}
	os.WriteFile(ready, nil, 0o644)
	u.waitCount(t, "READY=1", 1, 10*time.Second)
	if !readyWith(u.messages(), "MAINPID="+strconv.Itoa(in.cmd.Process.Pid)) {
		t.Errorf("READY=1 without MAINPID=%d: %q", in.cmd.Process.Pid, u.messages())
	}
	u.waitCount(t, "STATUS=2 of 2 workers ready, generation 1, mode shared", 1, 5*time.Second)
	// Datagrams keep their order: after READY=1, no STATUS= says fewer were ready.
	seenReady := false
	for _, m := range u.messages() {
		seenReady = seenReady || parseNotifyLine(m, "READY=1")
		if st, ok := parseNotify([]byte(m))["STATUS"]; ok && seenReady && !strings.HasPrefix(st, "2 of 2 ") {
			t.Errorf("READY=1 came before every worker was up: then STATUS=%s; messages %q", st, u.messages())
		}
	}

	in.signal(syscall.SIGHUP)
	u.waitCount(t, "RELOADING=1", 1, 5*time.Second)
	u.waitCount(t, "READY=1", 2, 15*time.Second)
	st = in.readyWorkers(2, 5*time.Second)
	for _, w := range st.Workers {
		if w.Generation != 2 {
			t.Errorf("READY=1 after the reload, but worker %d is of generation %d", w.PID, w.Generation)
		}
	}
	// STATUS= names the generations that serve: both while the slots turn over,
	// the new one once all have.
	u.waitCount(t, "STATUS=2 of 2 workers ready, generation 2, mode shared", 1, 5*time.Second)
	if !strings.Contains(strings.Join(u.messages(), "\n"), "workers ready, generations 1-2,") {
		t.Errorf("no STATUS= named both generations during the rolling reload: %q", u.messages())
	}
	// The order: READY=1, RELOADING=1, READY=1.
	var order []string
	for _, m := range u.messages() {
		for _, kv := range []string{"READY=1", "RELOADING=1", "STOPPING=1"} {
			if parseNotifyLine(m, kv) {
				order = append(order, kv)
			}
		}
	}
	if got := strings.Join(order, " "); got != "READY=1 RELOADING=1 READY=1" {
		t.Errorf("notifications %q, want READY=1 RELOADING=1 READY=1", got)
	}
	in.signal(syscall.SIGTERM)
	if code := in.wait(15 * time.Second); code != 0 {
		t.Errorf("exit status %d after TERM, want 0", code)
	}
	if u.count("STOPPING=1") != 1 {
		t.Errorf("no STOPPING=1 at TERM: %q", u.messages())
	}
}

// readyWith says whether one READY=1 datagram also carries kv.
func readyWith(msgs []string, kv string) bool {
	for _, m := range msgs {
		if parseNotifyLine(m, kv) && parseNotifyLine(m, "READY=1") {
			return true
		}
	}
	return false
}

func (u *upstreamListener) messages() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.msgs...)
}

// count is how many datagrams carry the assignment kv.
func (u *upstreamListener) count(kv string) int {
	n := 0
	for _, m := range u.messages() {
		if parseNotifyLine(m, kv) {
			n++
		}
	}
	return n
}

func (u *upstreamListener) waitCount(t *testing.T, kv string, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for u.count(kv) < n {
		if time.Now().After(deadline) {
			t.Fatalf("prefork sent %q %d times, want %d; messages: %q", kv, u.count(kv), n, u.messages())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
