//go:build linux || darwin

// This file tests --drain-delay, the Kubernetes recipe: after TERM the workers
// keep serving, untouched, for the drain delay, then stop gracefully.
package main

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestDrainDelayKeepsServing(t *testing.T) {
	const drain = 3 * time.Second
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "2", "--drain-delay", drain.String(), "--grace", "10s")
	st := in.readyWorkers(2, 15*time.Second)
	addr := in.addr()
	pids := map[int]bool{}
	for _, w := range st.Workers {
		pids[w.PID] = true
	}

	start := time.Now()
	in.signal(syscall.SIGTERM)
	in.waitFor("stopping", 5*time.Second, func(s statusFile) bool { return s.Stopping })
	// During the first half of the delay, new connections are still served by
	// the same workers, none of which was asked to stop.
	n := 0
	for time.Since(start) < drain/2 {
		rep, err := get(addr)
		if err != nil {
			t.Fatalf("request %d, %v after TERM, during the drain delay: %v", n, time.Since(start).Round(time.Millisecond), err)
		}
		if !pids[rep.PID] {
			t.Fatalf("answer from pid %d, not one of the workers %v", rep.PID, pids)
		}
		n++
		time.Sleep(10 * time.Millisecond)
	}
	if n == 0 {
		t.Fatal("no request ran during the drain delay")
	}
	if st, ok := in.readStatus(); ok {
		for _, w := range st.Workers {
			if w.State != "ready" {
				t.Errorf("worker %d is %s during the drain delay, want ready", w.PID, w.State)
			}
		}
	}

	if code := in.wait(drain + 20*time.Second); code != 0 {
		t.Errorf("exit status %d after TERM, want 0", code)
	}
	if el := time.Since(start); el < drain {
		t.Errorf("prefork exited %v after TERM, before the %v drain delay ended", el, drain)
	}
	for pid := range pids {
		if pidAlive(pid) {
			t.Errorf("worker %d outlived prefork", pid)
		}
	}
	out := in.stderr.String()
	if !strings.Contains(out, "draining before stopping workers") {
		t.Errorf("no log line about the drain delay:\n%s", out)
	}
}

func TestSecondTermCutsDrainShort(t *testing.T) {
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "1", "--drain-delay", "60s")
	st := in.readyWorkers(1, 15*time.Second)
	in.signal(syscall.SIGTERM)
	in.waitFor("stopping", 5*time.Second, func(s statusFile) bool { return s.Stopping })
	in.signal(syscall.SIGTERM)
	if code := in.wait(20 * time.Second); code != 0 { // far less than the 60s drain delay
		t.Errorf("exit status %d, want 0", code)
	}
	if pidAlive(st.Workers[0].PID) {
		t.Errorf("worker %d outlived prefork", st.Workers[0].PID)
	}
}
