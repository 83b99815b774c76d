//go:build linux

// This file tests --mode reuseport end to end: every slot has its own
// SO_REUSEPORT socket, kept across restarts of that slot (so connections queued on
// it wait for the replacement), closed when TTOU removes the slot, and a pool
// whose sockets do not fit the descriptor limit is refused at startup.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func init() {
	extraRoles["hold"] = holdWorker
}

// holdWorker is the http worker, except that in slot TESTWORKER_HOLD_SLOT, while
// the file TESTWORKER_HOLD_FILE exists at its start, it accepts nothing, ever:
// connections queue on its socket until it is killed.
func holdWorker() int {
	if os.Getenv("PREFORK_WORKER") == os.Getenv("TESTWORKER_HOLD_SLOT") {
		if _, err := os.Stat(os.Getenv("TESTWORKER_HOLD_FILE")); err == nil {
			select {}
		}
	}
	return testWorker("http")
}

// tcpListeners maps "socket:[INODE]" to the accept-queue length of every
// listening TCP socket on this port, from /proc/net/tcp and /proc/net/tcp6.
func tcpListeners(t *testing.T, port string) map[string]int {
	t.Helper()
	hexPort := fmt.Sprintf(":%04X", mustAtoi(t, port))
	out := map[string]int{}
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			// sl local rem st tx_queue:rx_queue tr:when retrnsmt uid timeout inode
			if len(f) < 10 || f[3] != "0A" || !strings.HasSuffix(f[1], hexPort) {
				continue
			}
			_, rx, _ := strings.Cut(f[4], ":")
			n, _ := strconv.ParseInt(rx, 16, 64) // for a listener: its accept queue
			out["socket:["+f[9]+"]"] = int(n)
		}
	}
	return out
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// fdTargets lists what process pid's descriptors link to, such as "socket:[1234]".
func fdTargets(t *testing.T, pid int) map[string]bool {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, e := range ents {
		if s, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); err == nil {
			out[s] = true
		}
	}
	return out
}

// listenSocket is the one listening socket on port that worker pid holds (at fd 3
// or wherever its runtime moved it).
func listenSocket(t *testing.T, pid int, port string) string {
	t.Helper()
	held := fdTargets(t, pid)
	var found []string
	for sock := range tcpListeners(t, port) {
		if held[sock] {
			found = append(found, sock)
		}
	}
	if len(found) != 1 {
		t.Fatalf("worker %d holds %d listening sockets on port %s, want 1: %v", pid, len(found), port, found)
	}
	return found[0]
}

func TestReuseportSlotSockets(t *testing.T) {
	in := startPrefork(t, "http", nil, "--mode", "reuseport", "-l", "127.0.0.1:0", "-n", "3")
	st := in.readyWorkers(3, 15*time.Second)
	addr := in.addr()
	_, port, _ := net.SplitHostPort(addr)
	prefork := in.cmd.Process.Pid
	holds := func(sock string) bool { return fdTargets(t, prefork)[sock] }

	// Each slot has its own socket, held by prefork too.
	sockOf := map[int]string{} // slot -> "socket:[inode]"
	for _, w := range st.Workers {
		sockOf[w.Slot] = listenSocket(t, w.PID, port)
		if !holds(sockOf[w.Slot]) {
			t.Errorf("prefork does not hold slot %d's socket %s", w.Slot, sockOf[w.Slot])
		}
	}
	if len(sockOf) != 3 || sockOf[0] == sockOf[1] || sockOf[1] == sockOf[2] || sockOf[0] == sockOf[2] {
		t.Fatalf("slots share sockets: %v", sockOf)
	}

	// The kernel spreads new connections over every slot's socket.
	seen := map[string]bool{}
	for i := 0; i < 600 && len(seen) < 3; i++ {
		rep, err := get(addr)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Env["PREFORK_MODE"] != "reuseport" {
			t.Fatalf("PREFORK_MODE=%q, want reuseport", rep.Env["PREFORK_MODE"])
		}
		seen[rep.Env["PREFORK_WORKER"]] = true
	}
	if len(seen) != 3 {
		t.Errorf("only slots %v answered 600 connections", seen)
	}

	// A slot's replacement inherits the very same socket.
	victim := st.Workers[1]
	syscall.Kill(victim.PID, syscall.SIGKILL)
	st = in.waitFor("replacement in slot 1", 15*time.Second, func(s statusFile) bool {
		for _, w := range s.Workers {
			if w.Slot == victim.Slot && w.PID != victim.PID && w.State == "ready" {
				return true
			}
		}
		return false
	})
	for _, w := range st.Workers {
		if w.Slot == victim.Slot {
			if got := listenSocket(t, w.PID, port); got != sockOf[victim.Slot] {
				t.Errorf("slot %d's replacement has socket %s, want the slot's own %s", w.Slot, got, sockOf[victim.Slot])
			}
		}
	}

	// TTOU: once slot 2's worker is gone, prefork closes slot 2's socket, and only that.
	in.signal(syscall.SIGTTOU)
	in.readyWorkers(2, 15*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for holds(sockOf[2]) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if holds(sockOf[2]) {
		t.Errorf("prefork still holds removed slot 2's socket %s", sockOf[2])
	}
	for _, slot := range []int{0, 1} {
		if !holds(sockOf[slot]) {
			t.Errorf("prefork closed slot %d's socket after TTOU removed slot 2", slot)
		}
	}
	for i := 0; i < 50; i++ {
		rep, err := get(addr)
		if err != nil {
			t.Fatalf("after TTOU: %v", err)
		}
		if rep.Env["PREFORK_WORKER"] == "2" {
			t.Fatal("removed slot 2 still answers")
		}
	}
	in.signal(syscall.SIGTERM)
	if code := in.wait(15 * time.Second); code != 0 {
		t.Errorf("exit status %d after TERM, want 0", code)
	}
}

// TestReuseportQueuedConnectionsSurviveWorkerDeath: connections waiting in a slot's
// accept queue when its worker is SIGKILLed are served by the replacement, not reset.
func TestReuseportQueuedConnectionsSurviveWorkerDeath(t *testing.T) {
	hold := filepath.Join(t.TempDir(), "hold")
	if err := os.WriteFile(hold, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	in := startPrefork(t, "hold", []string{"TESTWORKER_HOLD_SLOT=1", "TESTWORKER_HOLD_FILE=" + hold},
		"--mode", "reuseport", "-l", "127.0.0.1:0", "-n", "2", "--ready", "delay", "--ready-delay", "200ms")
	st := in.readyWorkers(2, 15*time.Second)
	addr := in.addr()
	victim := st.Workers[1]
	if victim.Slot != 1 {
		t.Fatalf("workers %+v", st.Workers)
	}
	_, port, _ := net.SplitHostPort(addr)
	victimSock := listenSocket(t, victim.PID, port)

	// Open connections and send requests: slot 0 answers its share, slot 1's share
	// waits in the accept queue of slot 1's socket, which nobody accepts on.
	const conns = 64
	type answer struct {
		rep workerReport
		err error
	}
	answers := make(chan answer, conns)
	for i := 0; i < conns; i++ {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(60 * time.Second))
		if _, err := c.Write([]byte("GET / HTTP/1.0\r\nHost: test\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		go func() {
			var a answer
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err == nil {
				err = json.NewDecoder(resp.Body).Decode(&a.rep)
				resp.Body.Close()
			}
			a.err = err
			answers <- a
		}()
	}
	var queued int
	deadline := time.Now().Add(10 * time.Second)
	for queued = tcpListeners(t, port)[victimSock]; queued == 0 && time.Now().Before(deadline); queued = tcpListeners(t, port)[victimSock] {
		time.Sleep(20 * time.Millisecond)
	}
	if queued == 0 {
		t.Fatal("no connection queued on slot 1's socket: the kernel did not spread them")
	}

	// Kill the worker that holds them; its replacement accepts.
	os.Remove(hold)
	syscall.Kill(victim.PID, syscall.SIGKILL)
	byReplacement := 0
	for i := 0; i < conns; i++ {
		a := <-answers
		if a.err != nil {
			t.Errorf("a connection opened before the worker died got no answer: %v", a.err)
			continue
		}
		if a.rep.Env["PREFORK_WORKER"] == "1" {
			if a.rep.PID == victim.PID {
				t.Errorf("the held worker answered")
			}
			byReplacement++
		}
	}
	if byReplacement < queued {
		t.Errorf("the replacement answered %d connections; %d were queued on slot 1 when its worker died", byReplacement, queued)
	}
	t.Logf("%d of %d connections waited in slot 1's queue and were answered by its replacement", byReplacement, conns)
}

func TestReuseportSocketFailureAtStartExits1(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("prlimit (util-linux) not installed")
	}
	// With 64 descriptors, 200 slots' sockets cannot all be opened: prefork
	// says so before it opens any of them.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, prlimit, "--nofile=64:64", "--", os.Args[0], "-v", "--mode", "reuseport",
		"-l", "127.0.0.1:0", "-n", "200", "--", os.Args[0])
	cmd.Env = append(os.Environ(), roleEnv+"=prefork", workerEnv+"=http", "GORACE=atexit_sleep_ms=0")
	out, _ := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("exit status %d, want 1; output:\n%s", code, out)
	}
	for _, want := range []string{"prefork: error: 200 workers in reuseport mode need about ", "the limit is 64 (ulimit -n)", "hint: raise the limit (ulimit -n "} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "worker started") {
		t.Errorf("a worker started although prefork could not open every slot's socket:\n%s", out)
	}
}

// TestReuseportRemovedSlotQueue shows what the man page says about TTOU in
// reuseport mode: connections still queued on the removed slot's socket when its
// last copy closes are reset, unless net.ipv4.tcp_migrate_req=1 lets the kernel
// move them to another socket of the group.
func TestReuseportRemovedSlotQueue(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	if err != nil {
		t.Skip("this kernel has no net.ipv4.tcp_migrate_req (before Linux 5.14): queued connections are reset")
	}
	migrate := strings.TrimSpace(string(b)) == "1"
	hold := filepath.Join(t.TempDir(), "hold")
	if err := os.WriteFile(hold, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	in := startPrefork(t, "hold", []string{"TESTWORKER_HOLD_SLOT=1", "TESTWORKER_HOLD_FILE=" + hold},
		"--mode", "reuseport", "-l", "127.0.0.1:0", "-n", "2", "--ready", "delay", "--ready-delay", "200ms")
	st := in.readyWorkers(2, 15*time.Second)
	addr := in.addr()
	_, port, _ := net.SplitHostPort(addr)
	sock := listenSocket(t, st.Workers[1].PID, port)
	var conns []net.Conn
	for i := 0; i < 64; i++ {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		c.Write([]byte("GET / HTTP/1.0\r\nHost: test\r\n\r\n"))
		conns = append(conns, c)
	}
	deadline := time.Now().Add(10 * time.Second)
	queued := tcpListeners(t, port)[sock]
	for ; queued == 0 && time.Now().Before(deadline); queued = tcpListeners(t, port)[sock] {
		time.Sleep(20 * time.Millisecond)
	}
	if queued == 0 {
		t.Fatal("no connection queued on slot 1's socket")
	}
	in.signal(syscall.SIGTTOU) // slot 1 goes; its worker dies of TERM without accepting
	reset := 0
	for _, c := range conns {
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			reset++
			continue
		}
		resp.Body.Close()
	}
	t.Logf("tcp_migrate_req=%v: %d connections queued on the removed slot, %d of %d reset", migrate, queued, reset, len(conns))
	if migrate && reset > 0 {
		t.Errorf("%d connections reset although tcp_migrate_req=1 migrates them", reset)
	}
	if !migrate && reset < queued {
		t.Errorf("%d connections reset, fewer than the %d queued on the removed slot: the man page is wrong", reset, queued)
	}
}
