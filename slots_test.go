//go:build linux || darwin

// This file tests the slot transitions of slots.go with real processes: workers
// that quit at once, rr workers that give up their channel, workers that never
// come up.
package main

import (
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const markerEnv = "TESTWORKER_MARKER"

func init() {
	extraRoles["storm"] = stormWorker
	extraRoles["rrclose"] = rrCloseWorker
	extraRoles["termlog"] = termLogWorker
}

// stormWorker says READY=1 and STOPPING=1 at once, then lingers, deaf to TERM.
func stormWorker() int {
	signal.Ignore(syscall.SIGTERM)
	sdNotify("READY=1")
	sdNotify("STOPPING=1")
	time.Sleep(time.Minute)
	return 1
}

// rrCloseWorker, the first time (no marker file yet), closes its rr handoff
// channel and keeps running; after that it is an ordinary HTTP worker.
func rrCloseWorker() int {
	m := os.Getenv(markerEnv)
	if _, err := os.Stat(m); err != nil {
		os.WriteFile(m, []byte(strconv.Itoa(os.Getpid())), 0o644)
		time.Sleep(300 * time.Millisecond)
		syscall.Close(3)
		time.Sleep(time.Minute)
		return 0
	}
	return testWorker("http")
}

// termLogWorker never says READY=1; on TERM it leaves a mark and exits 0.
func termLogWorker() int {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	<-sigs
	os.WriteFile(filepath.Join(os.Getenv(markerEnv), "term."+strconv.Itoa(os.Getpid())), nil, 0o644)
	return 0
}

func TestStoppingStormIsBounded(t *testing.T) {
	// Workers that say READY=1 then STOPPING=1 and linger once made prefork
	// with -n 2 run 83 workers in 4 s. Only one replacement per slot may be on
	// its way, and a replacement that quits young is a failed start.
	in := startPrefork(t, "storm", nil, "-l", "127.0.0.1:0", "-n", "2", "--ready", "notify",
		"--grace", "1s", "--backoff-min", "200ms", "--backoff-max", "1s", "--max-restarts", "0")
	time.Sleep(4 * time.Second)
	started := strings.Count(in.stderr.String(), "worker started")
	t.Logf("%d workers started in 4 s with -n 2", started)
	if started > 10 {
		t.Errorf("%d workers started in 4 s with -n 2: a STOPPING=1 storm", started)
	}
	if started < 3 {
		t.Errorf("%d workers started: the first STOPPING=1 should have started a replacement", started)
	}
	if !strings.Contains(in.stderr.String(), "counting a failed start") {
		t.Error("no replacement that quit young was counted as a failed start")
	}
}

func TestRRWorkerThatClosesItsChannelIsReplaced(t *testing.T) {
	// With -n 1, a worker that closes its handoff channel but keeps running
	// used to leave the service answering nothing, forever, while "ready".
	marker := filepath.Join(t.TempDir(), "closed")
	in := startPrefork(t, "rrclose", []string{markerEnv + "=" + marker}, "-l", "127.0.0.1:0", "-n", "1",
		"--mode", "rr", "--ready", "delay", "--ready-delay", "100ms", "--grace", "2s")
	addr := in.addr()
	deadline := time.Now().Add(15 * time.Second)
	var rep workerReport
	var err error
	for time.Now().Before(deadline) {
		if rep, err = get(addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("the service never answered after its only worker closed its channel: %v", err)
	}
	b, _ := os.ReadFile(marker)
	first, _ := strconv.Atoi(string(b))
	if first == 0 || rep.PID == first {
		t.Fatalf("answered by %d, want the replacement of %d", rep.PID, first)
	}
	in.waitFor("the broken worker gone", 10*time.Second, func(st statusFile) bool {
		return len(st.Workers) == 1 && !pidAlive(first)
	})
	if out := in.stderr.String(); !strings.Contains(out, "closed its handoff channel") {
		t.Errorf("the log does not say the worker closed its handoff channel:\n%s", out)
	}
}

func TestReadyTimeoutStopsGracefully(t *testing.T) {
	// A worker not up by --ready-timeout gets --stop-signal first, as systemd
	// stops a unit that missed its start timeout, not SIGKILL at once.
	marks := t.TempDir()
	in := startPrefork(t, "termlog", []string{markerEnv + "=" + marks}, "-l", "127.0.0.1:0", "-n", "1",
		"--ready", "notify", "--ready-timeout", "2s", "--grace", "20s", // 2s: time to install its TERM handler under -race
		"--backoff-min", "20ms", "--backoff-max", "40ms", "--max-restarts", "2")
	if code := in.wait(15 * time.Second); code != 1 {
		t.Fatalf("exit status %d, want 1 after workers that never came up", code)
	}
	terms, _ := filepath.Glob(filepath.Join(marks, "term.*"))
	if len(terms) != 2 {
		t.Errorf("%d workers got TERM, want both", len(terms))
	}
	if out := in.stderr.String(); !strings.Contains(out, "last exit status 0") {
		t.Errorf("the worker was not stopped gracefully:\n%s", out)
	}
}
