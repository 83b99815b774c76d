//go:build linux || darwin

// This file tests --watchdog end to end: a ready worker that stops sending
// WATCHDOG=1 gets SIGABRT, then SIGKILL after --grace, and is replaced, while a
// worker that keeps pinging runs on. The worker is notifyWorker (notify_test.go).
package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestWatchdog(t *testing.T) {
	marks := t.TempDir()
	// Generous figures: a loaded machine must not make a pinging worker miss.
	in := startPrefork(t, "notify", []string{marksEnv + "=" + marks, pingEnv + "=1"}, "-l", "127.0.0.1:0", "-n", "2",
		"--ready", "notify", "--watchdog", "1s", "--grace", "700ms", "--min-uptime", "0s")
	st := in.readyWorkers(2, 10*time.Second)
	keeper, silent := st.Workers[0], st.Workers[1]
	for _, w := range st.Workers {
		if got := readReport(t, marks, w.PID).Env["WATCHDOG_USEC"]; got != "1000000" {
			t.Errorf("worker %d: WATCHDOG_USEC=%q, want 1000000", w.PID, got)
		}
	}
	syscall.Kill(silent.PID, syscall.SIGUSR2) // it stops pinging; it ignores SIGABRT
	stopped := time.Now()
	st = in.waitFor("the silent worker's replacement", 15*time.Second, func(st statusFile) bool {
		ws := inSlot(st, silent.Slot)
		return len(ws) == 1 && ws[0].PID != silent.PID && ws[0].State == "ready"
	})
	// The worker is not killed for missing pings before the watchdog period is over.
	if el := time.Since(stopped); el < time.Second {
		t.Errorf("worker replaced %v after its last ping, before the 1s watchdog ran out", el)
	}
	if _, err := os.Stat(filepath.Join(marks, "abrt."+strconv.Itoa(silent.PID))); err != nil {
		t.Errorf("the silent worker never got SIGABRT: %v", err)
	}
	w := inSlot(st, silent.Slot)[0]
	if w.LastExit == nil || *w.LastExit != 128+int(syscall.SIGKILL) {
		t.Errorf("last_exit %v, want 137: a worker that ignores SIGABRT is killed after --grace", w.LastExit)
	}
	if pidAlive(silent.PID) {
		t.Errorf("silent worker %d still runs", silent.PID)
	}
	out := in.stderr.String()
	for _, want := range []string{"missed its watchdog", "grace period"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	// The pinging worker ran on through all of it, and a while longer.
	time.Sleep(2 * time.Second)
	st = in.readyWorkers(2, 5*time.Second)
	if ws := inSlot(st, keeper.Slot); len(ws) != 1 || ws[0].PID != keeper.PID {
		t.Errorf("slot %d: %+v; the worker that pinged (%d) should still run", keeper.Slot, ws, keeper.PID)
	}
	if _, err := os.Stat(filepath.Join(marks, "abrt."+strconv.Itoa(keeper.PID))); err == nil {
		t.Errorf("the worker that pinged got SIGABRT")
	}
}

func TestWatchdogWaitsForReady(t *testing.T) {
	// A worker that is still starting owes no pings: only --ready-timeout applies.
	ready := filepath.Join(t.TempDir(), "ready")
	in := startPrefork(t, "notify", []string{readyWhenEnv + "=" + ready, pingEnv + "=1"}, "-l", "127.0.0.1:0", "-n", "1",
		"--ready", "notify", "--ready-timeout", "60s", "--watchdog", "500ms")
	st := in.waitFor("a starting worker", 10*time.Second, func(st statusFile) bool { return len(st.Workers) == 1 })
	time.Sleep(time.Second)
	os.WriteFile(ready, nil, 0o644)
	now := in.readyWorkers(1, 10*time.Second)
	if now.Workers[0].PID != st.Workers[0].PID {
		t.Errorf("worker %d replaced by %d while starting", st.Workers[0].PID, now.Workers[0].PID)
	}
	if strings.Contains(in.stderr.String(), "missed its watchdog") {
		t.Error("a starting worker was held to the watchdog")
	}
}
