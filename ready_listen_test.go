//go:build linux

// This file tests --ready listen and the default --ready auto with real
// workers that boot for a while and then wait for connections on fd 3 in a
// blocking accept (recvmsg on the handoff channel in rr mode), select, poll or
// epoll, themselves or in a child; and releases that never wait.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

func init() { extraRoles["waiter"] = waiterWorker }

const (
	waysEnv  = "TESTWORKER_WAYS"  // how each slot waits, comma-separated: accept, select, poll, epoll, never; child:WAY
	bootEnv  = "TESTWORKER_BOOT"  // how long it boots before it waits
	neverEnv = "TESTWORKER_NEVER" // a file: while it exists, new workers never wait
	childEnv = "TESTWORKER_CHILD_WAY"
)

// waiterWorker boots for TESTWORKER_BOOT, writes MARKS/wait.PID (the time,
// in Unix nanoseconds), then waits on fd 3 as its slot's way says, and
// answers each connection it gets with its pid (shared and reuseport mode).
func waiterWorker() int {
	way := os.Getenv(childEnv)
	if way == "" {
		ways := strings.Split(os.Getenv(waysEnv), ",")
		slot, _ := strconv.Atoi(os.Getenv("PREFORK_WORKER"))
		way = ways[slot%len(ways)]
		if f := os.Getenv(neverEnv); f != "" {
			if _, err := os.Stat(f); err == nil {
				way = "never"
			}
		}
		if w, ok := strings.CutPrefix(way, "child:"); ok {
			// gunicorn's master and worker: the master waits for its child.
			pid, err := syscall.ForkExec(os.Args[0], os.Args, &syscall.ProcAttr{
				Env: append(os.Environ(), childEnv+"="+w), Files: []uintptr{0, 1, 2, 3}})
			if err != nil {
				return 5
			}
			var ws syscall.WaitStatus
			syscall.Wait4(pid, &ws, 0, nil)
			return ws.ExitStatus()
		}
	}
	boot, _ := time.ParseDuration(os.Getenv(bootEnv))
	time.Sleep(boot)
	syscall.SetNonblock(3, false)
	os.WriteFile(filepath.Join(os.Getenv(marksEnv), "wait."+strconv.Itoa(os.Getpid())),
		[]byte(strconv.FormatInt(time.Now().UnixNano(), 10)), 0o644)
	rr := os.Getenv("PREFORK_MODE") == "rr"
	for {
		switch way {
		case "accept":
			if rr {
				buf, oob := make([]byte, 64), make([]byte, 64)
				syscall.Recvmsg(3, buf, oob, 0)
				sleepForever() // the test hands it nothing
			}
		case "select":
			var r syscall.FdSet
			r.Bits[0] = 1 << 3
			syscall.Select(4, &r, nil, nil, nil)
		case "poll":
			pfd := struct {
				fd             int32
				events, revent int16
			}{3, 1, 0} // POLLIN
			syscall.Syscall6(syscall.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd)), 1, 0, 0, 0, 0)
		case "epoll":
			ep, _ := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
			syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, 3, &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: 3})
			syscall.EpollWait(ep, make([]syscall.EpollEvent, 1), -1)
			syscall.Close(ep)
		default: // never: it boots forever
			sleepForever()
		}
		if rr {
			sleepForever()
		}
		c, _, err := syscall.Accept(3)
		if err != nil {
			return 3
		}
		body := fmt.Sprintf(`{"pid":%d}`, os.Getpid())
		buf := make([]byte, 4096)
		syscall.Read(c, buf)
		syscall.Write(c, []byte(fmt.Sprintf("HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)))
		syscall.Close(c)
	}
}

func sleepForever() {
	for {
		time.Sleep(time.Hour)
	}
}

// upTimes polls the status file until n workers are ready and notes when each
// was first seen ready.
func upTimes(in *instance, n int, timeout time.Duration) (statusFile, map[int]time.Time) {
	in.t.Helper()
	up := map[int]time.Time{}
	st := in.waitFor(fmt.Sprintf("%d ready workers", n), timeout, func(st statusFile) bool {
		now := time.Now()
		for _, w := range st.Workers {
			if _, ok := up[w.PID]; !ok && w.State == "ready" {
				up[w.PID] = now
			}
		}
		return readyWhere(n, nil)(st)
	})
	return st, up
}

// waitedAt is when the worker began to wait, as it wrote it down.
func waitedAt(t *testing.T, marks string, pid int) time.Time {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(marks, "wait."+strconv.Itoa(pid)))
	if err != nil {
		t.Fatalf("worker %d came up but never wrote when it began to wait: %v", pid, err)
	}
	ns, _ := strconv.ParseInt(string(b), 10, 64)
	return time.Unix(0, ns)
}

// checkSeen checks each worker of st: up by being seen waiting in the way
// its slot waits, not before it booted, and soon after it began to wait.
func checkSeen(t *testing.T, st statusFile, up map[int]time.Time, marks string, ways []string, boot time.Duration, rr bool) {
	t.Helper()
	for _, w := range st.Workers {
		way := strings.TrimPrefix(ways[w.Slot%len(ways)], "child:")
		if way == "accept" && rr {
			way = "recv"
		}
		if w.UpBy != "seen waiting" || w.SeenIn != way {
			t.Errorf("slot %d (waits by %s): up by %q in %q, want seen waiting in %s", w.Slot, ways[w.Slot%len(ways)], w.UpBy, w.SeenIn, way)
		}
		if took := up[w.PID].Sub(w.Started); took < boot {
			t.Errorf("slot %d up %v after its start, before it booted (%v)", w.Slot, took, boot)
		}
		waited := waitedAt(t, marks, childOr(w.PID))
		if after := up[w.PID].Sub(waited); after > 1500*time.Millisecond {
			t.Errorf("slot %d (%s) up %v after it began to wait, want within 1.5s", w.Slot, way, after)
		} else {
			t.Logf("slot %d (%s): up %v after it began to wait", w.Slot, ways[w.Slot%len(ways)], after.Round(time.Millisecond))
		}
	}
}

// childOr is the only child of pid where it has one (the process that waits
// for a worker that waits in its child), else pid.
func childOr(pid int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if f := strings.Fields(string(b)); len(f) == 1 {
		c, _ := strconv.Atoi(f[0])
		return c
	}
	return pid
}

func TestReadySeenWaiting(t *testing.T) {
	ways := []string{"accept", "select", "poll", "epoll"}
	const boot = 2 * time.Second
	for _, mode := range []string{"shared", "reuseport", "rr"} {
		for _, rule := range []string{"auto", "listen"} {
			t.Run(mode+"/"+rule, func(t *testing.T) {
				marks := t.TempDir()
				args := []string{"--mode", mode, "-l", "127.0.0.1:0", "-n", strconv.Itoa(len(ways))}
				if rule != "auto" { // the default
					args = append(args, "--ready", rule)
				}
				in := startPrefork(t, "waiter", []string{waysEnv + "=" + strings.Join(ways, ","), bootEnv + "=" + boot.String(),
					marksEnv + "=" + marks}, args...)
				st, up := upTimes(in, len(ways), 30*time.Second)
				checkSeen(t, st, up, marks, ways, boot, mode == "rr")
			})
		}
	}
}

func TestReadySeenWaitingInAChild(t *testing.T) {
	ways := []string{"child:accept", "child:epoll"}
	for _, rule := range []string{"auto", "listen"} {
		t.Run(rule, func(t *testing.T) {
			marks := t.TempDir()
			in := startPrefork(t, "waiter", []string{waysEnv + "=" + strings.Join(ways, ","), bootEnv + "=2s", marksEnv + "=" + marks},
				"-l", "127.0.0.1:0", "-n", "2", "--ready", rule)
			st, up := upTimes(in, 2, 30*time.Second)
			checkSeen(t, st, up, marks, ways, 2*time.Second, false)
			rep, err := get(in.addr())
			for _, w := range st.Workers {
				if err != nil || rep.PID == w.PID {
					t.Errorf("answered by %d (%v); want a child of a worker", rep.PID, err)
				}
			}
		})
	}
}

// Under --ready listen, a release whose workers never wait is not up by
// --ready-timeout: the reload is abandoned, the client exits 1 naming the
// slot, and the old workers keep serving.
func TestReadyListenReloadOfAReleaseThatNeverWaits(t *testing.T) {
	sock := ctlSock(t)
	never := filepath.Join(t.TempDir(), "never")
	in := startPrefork(t, "waiter", []string{waysEnv + "=accept", bootEnv + "=0s", marksEnv + "=" + t.TempDir(), neverEnv + "=" + never},
		"-l", "127.0.0.1:0", "-n", "2", "--ready", "listen", "--ready-timeout", "3s", "--grace", "2s", "--control", sock)
	old := in.readyWorkers(2, 15*time.Second)
	// How they came up, as the control socket and the metrics say it.
	if out := mustCtl(t, sock, "status"); strings.Count(out, "seen waiting (accept)") != 2 {
		t.Errorf("status does not say both workers were seen waiting in accept:\n%s", out)
	}
	for _, w := range old.Workers {
		if v := promValue(t, mustProm(t, sock), "prefork_worker_up_by", "pid", strconv.Itoa(w.PID), "up_by", "seen waiting", "seen_in", "accept"); v != 1 {
			t.Errorf("prefork_worker_up_by of pid %d seen waiting in accept = %v, want 1", w.PID, v)
		}
	}
	os.WriteFile(never, nil, 0o644)
	code, out, errs := ctlCall(sock, "reload", "--timeout", "30s")
	if code != 1 || !strings.Contains(errs, "slot 0") || !strings.Contains(errs, "abandoned") {
		t.Fatalf("reload of a release that never waits: exit %d %q %q; want 1, naming slot 0", code, out, errs)
	}
	in.readyWorkers(2, 15*time.Second)
	want := map[int]bool{}
	for _, w := range old.Workers {
		want[w.PID] = true
	}
	for pid := range pidsServing(t, in.addr(), 20) {
		if !want[pid] {
			t.Errorf("pid %d answered; only the old workers %v should", pid, want)
		}
	}
}

// Under --ready auto, workers prefork never sees waiting come up at
// --ready-timeout by the delay rule, with one warning; from then on new ones
// come up after --ready-delay.
func TestReadyAutoUnseenFallsBackToTheDelayRule(t *testing.T) {
	sock := ctlSock(t)
	in := startPrefork(t, "waiter", []string{waysEnv + "=never", marksEnv + "=" + t.TempDir()},
		"-l", "127.0.0.1:0", "-n", "2", "--ready-timeout", "3s", "--ready-delay", "500ms", "--control", sock)
	start := time.Now()
	st, up := upTimes(in, 2, 20*time.Second)
	for _, w := range st.Workers {
		if w.UpBy != "delay" {
			t.Errorf("slot %d up by %q, want delay", w.Slot, w.UpBy)
		}
		if took := up[w.PID].Sub(start); took < 3*time.Second {
			t.Errorf("slot %d up after %v, before --ready-timeout", w.Slot, took)
		}
	}
	if n := strings.Count(in.stderr.String(), "not seen waiting for connections"); n != 1 {
		t.Errorf("%d warnings that workers were not seen, want 1", n)
	}
	start = time.Now()
	if code, out, errs := ctlCall(sock, "reload", "--timeout", "30s"); code != 0 {
		t.Fatalf("reload: exit %d %q %q", code, out, errs)
	}
	// Two slots, one at a time, each up by the delay rule after 500ms.
	if took := time.Since(start); took > 2*3*time.Second {
		t.Errorf("the reload took %v: new workers waited for --ready-timeout again", took)
	}
}
