//go:build linux || darwin

// Tests of issue 18: Node cluster workers that misbehave on the channel (the
// Go worker of node_hostile_test.go plays them) cost prefork neither memory
// nor descriptors, and are replaced where they can no longer serve.
package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prefork/prefork/internal/nodecluster"
)

// startFakeNode runs prefork as the cluster primary of n Go workers that
// listen on port through the channel (bound on request).
func startFakeNode(t *testing.T, mode string, n int, port int, env []string, args ...string) *instance {
	t.Helper()
	env = append(env, "FAKE_PORT="+strconv.Itoa(port))
	args = append([]string{"--node-cluster", "on", "--mode", mode, "-n", strconv.Itoa(n), "--ready-delay", "60s"}, args...)
	return startPrefork(t, "nodefake", env, args...)
}

// openFdCount counts a process's open descriptors; the test is skipped where
// /proc cannot tell.
func openFdCount(t *testing.T, pid int) int {
	t.Helper()
	names, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Skipf("cannot count descriptors: %v", err)
	}
	return len(names)
}

// rssMB is a process's resident size in MiB, from /proc; -1 where it cannot tell.
func rssMB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return kb >> 10
		}
	}
	return -1
}

var fakeClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// replacedWorker waits for a ready worker other than old, in a pool of one.
func replacedWorker(t *testing.T, in *instance, old int) workerStatus {
	t.Helper()
	st := in.waitFor("a replacement", 20*time.Second, readyWhere(1, func(w workerStatus) bool { return w.PID != old }))
	for _, w := range st.Workers {
		if w.PID != old {
			return w
		}
	}
	t.Fatal("no replacement")
	return workerStatus{}
}

// Issue 18.3: a worker that sends a line without end is broken once the line
// passes MaxLine: stopped and replaced, and prefork gives the memory back.
func TestNodeEndlessLine(t *testing.T) {
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			port := freePort(t)
			in := startFakeNode(t, mode, 1, port, []string{"FAKE_NODE=endless", "FAKE_ONCE=" + filepath.Join(t.TempDir(), "once")})
			st := in.readyWorkers(1, 20*time.Second)
			before := rssMB(in.cmd.Process.Pid)
			in.waitLog("longer than 16 MiB", 20*time.Second)
			in.waitLog("worker channel broken", 5*time.Second)
			replacedWorker(t, in, st.Workers[0].PID)
			if _, err := fetch(fakeClient, fmt.Sprintf("http://127.0.0.1:%d/", port)); err != nil {
				t.Fatalf("after the replacement: %v", err)
			}
			// Without a bound prefork keeps all the worker writes (768 MiB);
			// with it a line costs 16 MiB while it lasts, given back after
			// (the race detector's shadow of it stays: 150 MiB).
			mb := rssMB(in.cmd.Process.Pid)
			for deadline := time.Now().Add(10 * time.Second); mb > before+300 && time.Now().Before(deadline); mb = rssMB(in.cmd.Process.Pid) {
				time.Sleep(200 * time.Millisecond)
			}
			t.Logf("prefork resident: %d MiB when the worker was up, %d MiB after the endless line", before, mb)
			if mb > before+300 {
				t.Errorf("prefork is %d MiB resident after the endless line, %d MiB before; want the buffer given back", mb, before)
			}
			nodeStop(t, in)
		})
	}
}

// Issue 18.4: descriptors a worker attaches to lines that are not NODE_HANDLE
// are closed at once, not kept until the worker goes.
func TestNodeStrayDescriptorsClosed(t *testing.T) {
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			port := freePort(t)
			in := startFakeNode(t, mode, 1, port, []string{"FAKE_FDS=300"})
			in.readyWorkers(1, 20*time.Second)
			url := fmt.Sprintf("http://127.0.0.1:%d/", port)
			if _, err := fetch(fakeClient, url); err != nil {
				t.Fatal(err)
			}
			before := openFdCount(t, in.cmd.Process.Pid)
			if _, err := fetch(fakeClient, url+"fds"); err != nil {
				t.Fatal(err)
			}
			if _, err := fetch(fakeClient, url); err != nil { // the channel has been read past them
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond)
			if after := openFdCount(t, in.cmd.Process.Pid); after > before+3 {
				t.Errorf("prefork has %d descriptors open after the worker sent 300 without NODE_HANDLE, %d before", after, before)
			}
			nodeStop(t, in)
		})
	}
}

// Issue 18.5: in rr mode a worker that closes its channel and keeps running
// serves nothing: it is broken, stopped and replaced, and what waited for it
// is served by the replacement.
func TestNodeRRClosedChannelReplaced(t *testing.T) {
	port := freePort(t)
	in := startFakeNode(t, "rr", 1, port, []string{"FAKE_NODE=closechan", "FAKE_ONCE=" + filepath.Join(t.TempDir(), "once")})
	st := in.readyWorkers(1, 20*time.Second)
	victim := st.Workers[0].PID
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	for i := 0; i < 5; i++ {
		b, err := fetch(fakeClient, url)
		if err != nil || b == strconv.Itoa(victim) {
			t.Fatalf("request %d: %q, %v", i, b, err)
		}
	}
	in.waitLog("closed its node cluster channel and kept running", 5*time.Second)
	for deadline := time.Now().Add(10 * time.Second); pidAlive(victim); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the worker %d that closed its channel still runs", victim)
		}
	}
	nodeStop(t, in)
}

// cpuSeconds is a process's user and system time, from /proc.
func cpuSeconds(t *testing.T, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Skipf("cannot read CPU time: %v", err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return float64(ut+st) / 100 // USER_HZ
}

// Issue 18.6: when every worker refuses a connection (accepted: false),
// prefork offers it again with a backoff, not in a spin, and closes it once it
// has waited rr.RefusedWait, saying so.
func TestNodeRRAllRefuse(t *testing.T) {
	port := freePort(t)
	in := startFakeNode(t, "rr", 2, port, []string{"FAKE_NODE=refuse"})
	in.readyWorkers(2, 20*time.Second)
	var conns []net.Conn
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		conns = append(conns, c)
	}
	time.Sleep(500 * time.Millisecond)
	pid := in.cmd.Process.Pid
	cpu0, t0 := cpuSeconds(t, pid), time.Now()
	time.Sleep(3 * time.Second)
	if used := (cpuSeconds(t, pid) - cpu0) / time.Since(t0).Seconds(); used > 0.15 {
		t.Errorf("prefork used %.0f%% of a core while every worker refused 3 connections", used*100)
	}
	in.waitLog("no worker accepted a connection", 20*time.Second)
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 100)); err == nil || n > 0 {
			t.Errorf("connection %d: read %d bytes, %v; want it closed", i, n, err)
		}
	}
	nodeStop(t, in)
}

// Issue 18.1: a worker's queryServer flood binds at most
// nodecluster.PerWorker sockets for it; the rest fail with EMFILE, and prefork
// keeps the descriptors it needs: under ulimit -n 512 a worker can still be
// started afterwards, and the service answers.
func TestNodeQueryServerFlood(t *testing.T) {
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			port := freePort(t)
			in := startPreforkWrapped(t, []string{"/bin/sh", "-c", `ulimit -n 512 && exec "$@"`, "sh"},
				[]string{workerEnv + "=nodefake", "FAKE_PORT=" + strconv.Itoa(port)},
				"--node-cluster", "on", "--mode", mode, "-n", "2", "--ready-delay", "60s", "--", os.Args[0])
			st := in.readyWorkers(2, 20*time.Second)
			url := fmt.Sprintf("http://127.0.0.1:%d/", port)
			bound := 0
			for i := 0; i < 2; i++ {
				b, err := fetch(fakeClient, url+"query?n=1500")
				if err != nil {
					t.Fatal(err)
				}
				var counts map[string]int
				if err := json.Unmarshal([]byte(b), &counts); err != nil {
					t.Fatalf("%q: %v", b, err)
				}
				ok := counts["0"] + counts["<nil>"]
				if ok > nodecluster.PerWorker || counts["-24"] != 1500-ok {
					t.Errorf("a worker's 1500 listen(0): %v; want at most %d bound, the rest EMFILE (-24)", counts, nodecluster.PerWorker)
				}
				bound += ok
			}
			if bound == 0 {
				t.Errorf("no listen(0) was bound at all")
			}
			in.waitLog("refusing to bind a socket for a worker", 5*time.Second)
			// prefork can still start workers, accept and answer.
			victim := st.Workers[0].PID
			syscall.Kill(victim, syscall.SIGKILL)
			in.waitFor("the restart", 20*time.Second, readyWhere(2, func(w workerStatus) bool { return w.PID != victim }))
			for i := 0; i < 5; i++ {
				if _, err := fetch(fakeClient, url); err != nil {
					t.Fatalf("request %d after the flood: %v", i, err)
				}
			}
			nodeStop(t, in)
		})
	}
}

// Issue 18.2: a socket bound for Node workers is closed once no worker
// serves on it: after a reload moves the app to another port the old port
// stops accepting, and the status shows the sockets bound for Node.
func TestNodeReloadClosesOldPort(t *testing.T) {
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			a, b := freePort(t), freePort(t)
			for b == a {
				b = freePort(t)
			}
			conf := filepath.Join(t.TempDir(), "port")
			os.WriteFile(conf, []byte(strconv.Itoa(a)), 0o644)
			sock := ctlSock(t)
			in := startNode(t, "app.js", []string{"APP_LISTEN_FILE=" + conf}, "-n", "2", "--mode", mode, "--control", sock)
			st := in.readyWorkers(2, 20*time.Second)
			if !hasPort(st.Listeners, a) {
				t.Errorf("status listeners %v; want the socket bound on :%d", st.Listeners, a)
			}
			if out := mustCtl(t, sock, "status"); !strings.Contains(out, ":"+strconv.Itoa(a)) {
				t.Errorf("--ctl status does not show :%d:\n%s", a, out)
			}
			if _, err := fetch(closeClient, fmt.Sprintf("http://127.0.0.1:%d/", a)); err != nil {
				t.Fatal(err)
			}
			os.WriteFile(conf, []byte(strconv.Itoa(b)), 0o644)
			in.signal(syscall.SIGHUP)
			in.waitLog("reload complete", 30*time.Second)
			if _, err := fetch(closeClient, fmt.Sprintf("http://127.0.0.1:%d/", b)); err != nil {
				t.Fatalf("the new port: %v", err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(a), time.Second)
				if err != nil {
					break
				}
				c.Close()
				if time.Now().After(deadline) {
					t.Fatalf("the old port :%d still accepts 10 s after the reload", a)
				}
				time.Sleep(100 * time.Millisecond)
			}
			st, _ = in.readStatus()
			if hasPort(st.Listeners, a) || !hasPort(st.Listeners, b) {
				t.Errorf("status listeners %v after the reload; want :%d and not :%d", st.Listeners, b, a)
			}
			nodeStop(t, in)
		})
	}
}

func hasPort(listeners []string, port int) bool {
	for _, l := range listeners {
		if strings.HasSuffix(l, ":"+strconv.Itoa(port)) {
			return true
		}
	}
	return false
}
