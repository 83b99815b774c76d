// This file tests the signal dispositions and mask workers start with, and
// stop signals sent in prefork's first milliseconds: Linux, where /proc shows
// a process's signal state.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// caughtUp waits until prefork catches the stop signals: it ignores SIGPIPE
// at the same instant. Before that, while the Go runtime itself starts, any Go
// program dies of SIGTERM.
func caughtUp(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Microsecond) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatal(err)
		}
		if sigMasks(t, string(b))["SigIgn"]&(1<<(syscall.SIGPIPE-1)) != 0 {
			return
		}
	}
	t.Fatal("prefork never ignored SIGPIPE")
}

// sigMasks reads a process's signal masks from /proc/PID/status, or from a
// copy of its Sig* lines.
func sigMasks(t *testing.T, status string) map[string]uint64 {
	t.Helper()
	m := map[string]uint64{}
	for _, line := range strings.Split(status, "\n") {
		name, hex, _ := strings.Cut(line, ":")
		if name != "SigIgn" && name != "SigBlk" && name != "SigCgt" {
			continue
		}
		v, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
		if err != nil {
			t.Fatalf("cannot read %q: %v", line, err)
		}
		m[name] = v
	}
	return m
}

// Issue 9.1: prefork ignores SIGPIPE, and ignored signals survive execve: the
// workers must still get the default disposition, and no blocked signal. A
// shell keeps an ignored signal ignored for what it runs, so grep shows what
// the worker got.
func TestWorkersGetDefaultSignals(t *testing.T) {
	marks := t.TempDir()
	status := filepath.Join(t.TempDir(), "status.json")
	cmd := exec.Command(os.Args[0], "--status-file", status, "-l", "127.0.0.1:0", "-n", "2", "--ready", "delay", "--ready-delay", "100ms", "--",
		"/bin/sh", "-c", `grep -E '^Sig(Ign|Blk):' /proc/self/status > "$0/$$.tmp" && mv "$0/$$.tmp" "$0/$$"; exec sleep 60`, marks)
	in := &instance{t: t, cmd: cmd, stderr: &syncBuffer{}, status: status, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = in.stderr, in.stderr
	cmd.Env = append(os.Environ(), roleEnv+"=prefork", "GORACE=atexit_sleep_ms=0")
	in.watch()
	caughtUp(t, cmd.Process.Pid)
	st := in.readyWorkers(2, 15*time.Second)
	for _, w := range st.Workers {
		var b []byte
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if b, _ = os.ReadFile(filepath.Join(marks, strconv.Itoa(w.PID))); len(b) > 0 {
				break
			}
		}
		m := sigMasks(t, string(b))
		if len(m) != 2 || m["SigIgn"]&(1<<(syscall.SIGPIPE-1)) != 0 || m["SigBlk"] != 0 {
			t.Errorf("worker %d: %q; want SIGPIPE not ignored and no signal blocked", w.PID, b)
		}
	}
	in.signal(syscall.SIGTERM)
	if code := in.wait(20 * time.Second); code != 0 {
		t.Errorf("exit status %d, want 0", code)
	}
}

// Issue 9.9: a TERM in the first milliseconds of prefork's life ends it with
// status 0 and leaves nothing behind: no pidfile, no unix socket file, no
// notify directory. The delay counts from the instant prefork catches signals,
// which is as early as a Go program can: while the Go runtime itself starts,
// SIGTERM's default action still applies (and prefork has created nothing).
func TestStopRightAfterStart(t *testing.T) {
	dir := t.TempDir()
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "XDG_RUNTIME_DIR=") {
			env = append(env, kv)
		}
	}
	env = append(env, "TMPDIR="+tmp, "GORACE=atexit_sleep_ms=0")
	const runs = 42
	started := 0
	for i := 0; i < runs; i++ {
		delay := time.Duration(i%21) * time.Millisecond
		pidfile, sock := filepath.Join(dir, "prefork.pid"), filepath.Join(dir, "s.sock")
		cmd := exec.Command(os.Args[0], "--pidfile", pidfile, "-l", "unix:"+sock, "-l", "127.0.0.1:0", "-n", "2",
			"--ready", "notify", "-v", "--", os.Args[0])
		cmd.Env = env
		var out syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.Env = append(env, roleEnv+"=prefork", workerEnv+"=http")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		caughtUp(t, cmd.Process.Pid)
		time.Sleep(delay)
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("run %d: prefork did not exit within 20s of a TERM %v after start:\n%s", i, delay, out.String())
		}
		if judgeExit(t, out.String(), 0, true) { // the race rule; the status is judged below
			t.Fatalf("run %d:\n%s", i, out.String())
		}
		ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if ws.Signaled() || ws.ExitStatus() != 0 {
			t.Fatalf("run %d: TERM %v after start: exit status %d (signal %v), want 0:\n%s", i, delay, ws.ExitStatus(), ws.Signal(), out.String())
		}
		if strings.Contains(out.String(), "worker started slot=") {
			started++
		}
		for _, p := range []string{pidfile, sock} {
			if _, err := os.Lstat(p); err == nil {
				t.Fatalf("run %d: TERM %v after start left %s behind:\n%s", i, delay, p, out.String())
			}
		}
		if ents, _ := os.ReadDir(tmp); len(ents) > 0 {
			t.Fatalf("run %d: TERM %v after start left %s in the temporary directory:\n%s", i, delay, ents[0].Name(), out.String())
		}
	}
	t.Logf("%d of %d runs stopped before any worker started", runs-started, runs)
}

// A worker's descendant that left its process group (setsid) and outlives the
// grace period of a stop is killed, not left holding the listener: the next
// prefork on that port could not bind.
func TestStopKillsEscapedDescendants(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "escaped")
	script := `setsid sh -c 'echo $$ >"$PIDFILE"; exec sleep 60' & sleep 60`
	in := startPrefork(t, "", []string{"PIDFILE=" + pidFile}, "-l", "127.0.0.1:0", "-n", "1", "--ready", "delay", "--ready-delay", "200ms",
		"--grace", "500ms", "--", "sh", "-c", script)
	in.readyWorkers(1, 10*time.Second)
	var escaped int
	for deadline := time.Now().Add(5 * time.Second); escaped == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(pidFile)
		escaped, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	if escaped == 0 {
		t.Fatal("the descendant did not start")
	}
	in.signal(syscall.SIGTERM)
	if code := in.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(escaped, 0) == nil && !dead(escaped) {
		if time.Now().After(deadline) {
			syscall.Kill(escaped, syscall.SIGKILL)
			t.Fatalf("the escaped descendant %d outlived prefork", escaped)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(in.stderr.String(), "killed them") {
		t.Errorf("no word of the killed descendants:\n%s", in.stderr.String())
	}
}

// noexecDir mounts a tmpfs with -o noexec for the test (root only) and
// unmounts it in cleanup.
func noexecDir(t *testing.T) string {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("mounting a noexec tmpfs needs root; skipped")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "noexec,mode=755", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a noexec tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// Issue 18.8: a command, or its absolute #! interpreter, on a filesystem
// mounted noexec is refused before any worker starts (126, "mounted noexec"),
// and a reload to one is abandoned with the old workers serving.
func TestNoexecCommandRefused(t *testing.T) {
	dir := noexecDir(t)
	sh := filepath.Join(dir, "sh")
	b, err := os.ReadFile("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sh, b, 0o755); err != nil {
		t.Fatal(err)
	}
	onNoexec := filepath.Join(dir, "server")
	writeScript(t, onNoexec, "#!/bin/sh\nexec "+os.Args[0]+"\n")
	viaInterp := filepath.Join(t.TempDir(), "server")
	writeScript(t, viaInterp, "#!"+sh+"\nexec "+os.Args[0]+"\n")
	for _, c := range []struct{ name, cmd string }{{"command", onNoexec}, {"interpreter", viaInterp}} {
		t.Run(c.name, func(t *testing.T) {
			code, out, _ := runPrefork(t, nil, preforkEnv("http"), nil, "-l", "127.0.0.1:0", "-n", "2", "--", c.cmd)
			if code != 126 || !strings.Contains(out, "mounted noexec") || strings.Contains(out, "worker started") {
				t.Errorf("status %d, want 126, \"mounted noexec\" and no worker started:\n%s", code, out)
			}
		})
	}
	for _, mode := range modes() {
		t.Run("reload/"+mode, func(t *testing.T) {
			link := filepath.Join(t.TempDir(), "server")
			good := filepath.Join(t.TempDir(), "server")
			writeScript(t, good, "#!/bin/sh\nexec "+os.Args[0]+"\n")
			if err := os.Symlink(good, link); err != nil {
				t.Fatal(err)
			}
			in := startPrefork(t, "", []string{workerEnv + "=http"}, "--mode", mode, "-l", "127.0.0.1:0", "-n", "2",
				"--ready", "notify", "--", link)
			st := in.readyWorkers(2, 15*time.Second)
			old := map[int]bool{st.Workers[0].PID: true, st.Workers[1].PID: true}
			for _, target := range []string{onNoexec, viaInterp} {
				os.Remove(link)
				if err := os.Symlink(target, link); err != nil {
					t.Fatal(err)
				}
				in.signal(syscall.SIGHUP)
				in.waitLog("mounted noexec", 10*time.Second)
				time.Sleep(200 * time.Millisecond)
				st, _ := in.readStatus()
				for _, w := range st.Workers {
					if !old[w.PID] || w.State != "ready" {
						t.Fatalf("after a reload to a noexec command the workers are %+v; want the old ones serving", st.Workers)
					}
				}
				if rep, err := get(in.addr()); err != nil || !old[rep.PID] {
					t.Fatalf("after the reload: %v, answered by %d", err, rep.PID)
				}
			}
			if n := strings.Count(in.stderr.String(), "reload abandoned"); n != 2 {
				t.Errorf("%d reloads abandoned, want 2:\n%s", n, in.stderr.String())
			}
			in.signal(syscall.SIGTERM)
			if code := in.wait(20 * time.Second); code != 0 {
				t.Fatalf("exit status %d, want 0", code)
			}
		})
	}
}
