//go:build linux || darwin

// This file tests signals that reach prefork or its control client: a broken
// stderr (SIGPIPE, issue 9.1) and the default dispositions a control client
// keeps. hardening_linux_test.go holds the tests that read /proc.
package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Issue 9.1: whatever reads prefork's stderr goes away; the next log line must
// not kill prefork (and with it every worker).
func TestBrokenStderrKeepsServing(t *testing.T) {
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			in := startPreforkOut(t, w, "http", nil, "--mode", mode, "-l", "127.0.0.1:0", "-n", "2", "--ready", "notify")
			w.Close()
			copied := make(chan struct{})
			go func() { io.Copy(in.stderr, r); close(copied) }()
			st := in.readyWorkers(2, 15*time.Second)
			addr := in.addr()
			r.Close() // the log reader goes away
			<-copied
			victim := st.Workers[0].PID
			syscall.Kill(victim, syscall.SIGKILL) // prefork logs its exit and the restart
			st = in.waitFor("the replacement", 15*time.Second, readyWhere(2, func(w workerStatus) bool { return w.PID != victim }))
			for i := 0; i < 20; i++ {
				if _, err := get(addr); err != nil {
					t.Fatalf("request %d after stderr broke: %v", i, err)
				}
			}
			in.signal(syscall.SIGTERM) // more log lines, then a clean exit
			if code := in.wait(20 * time.Second); code != 0 {
				t.Fatalf("prefork exited with status %d after its stderr broke, want 0", code)
			}
		})
	}
}

// Signals caught from prefork's first instant must not outlive the decision to
// supervise: the control client, waiting for a reload that never ends, still
// dies of the TERM (or ^C) sent to it.
func TestCtlClientKeepsDefaultSignals(t *testing.T) {
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	in := startPrefork(t, "", nil, "--control", ctl, "-l", "127.0.0.1:0", "-n", "1", "--ready", "notify",
		"--", "/bin/sh", "-c", "exec sleep 60")
	in.waitFor("a worker", 10*time.Second, func(st statusFile) bool { return len(st.Workers) == 1 })
	client := exec.Command(os.Args[0], "--ctl", ctl, "reload", "--timeout", "50s")
	client.Env = preforkEnv("")
	var out syncBuffer
	client.Stdout, client.Stderr = &out, &out
	if err := client.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { client.Wait(); close(done) }()
	in.waitLog("reload asked for on the control socket", 10*time.Second)
	time.Sleep(100 * time.Millisecond)
	client.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		client.Process.Kill()
		<-done
		t.Fatalf("the control client did not die of TERM:\n%s", out.String())
	}
	if ws := client.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("the control client ended with %v, want death by SIGTERM:\n%s", client.ProcessState, out.String())
	}
}

// --kill-mode: the stop signal goes to the worker's whole process group (README:
// What a worker gets; a shell wrapper stops with what it started), or with mixed to the worker
// alone, so that a master process (Starman, uWSGI) stops its own children
// gracefully; they would otherwise get the signal directly and drop what is
// in flight. The worker here records, on TERM, whether its child got it too.
func TestKillMode(t *testing.T) {
	for _, c := range []struct{ mode, want string }{{"group", "child-dead"}, {"mixed", "child-alive"}} {
		t.Run(c.mode, func(t *testing.T) {
			dir := t.TempDir()
			marks, armed := filepath.Join(dir, "marks"), filepath.Join(dir, "armed")
			script := `sleep 30 & child=$!
trap 'sleep 0.3; if kill -0 $child 2>/dev/null; then echo child-alive; else echo child-dead; fi >>"$MARKS"; kill $child; exit 0' TERM
: >"$ARMED"
wait`
			in := startPrefork(t, "", []string{"MARKS=" + marks, "ARMED=" + armed}, "--kill-mode", c.mode, "-l", "127.0.0.1:0", "-n", "1",
				"--ready", "delay", "--ready-delay", "300ms", "--grace", "10s", "--", "sh", "-c", script)
			in.readyWorkers(1, 10*time.Second)
			// Up by the delay is not the trap set: on a busy machine the
			// shell may not have got there yet.
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				if _, err := os.Stat(armed); err == nil {
					break
				} else if time.Now().After(deadline) {
					t.Fatal("the worker never set its TERM trap")
				}
			}
			in.signal(syscall.SIGTERM)
			if code := in.wait(15 * time.Second); code != 0 {
				t.Fatalf("exit status %d, want 0", code)
			}
			b, _ := os.ReadFile(marks)
			if got := strings.TrimSpace(string(b)); got != c.want {
				t.Errorf("--kill-mode %s: the worker saw %q, want %q", c.mode, got, c.want)
			}
		})
	}
}
