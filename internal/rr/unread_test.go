//go:build linux || darwin

package rr

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prefork/prefork/internal/testfd"
)

// A worker that never reads its channel (a server that does not speak the
// handoff protocol) holds the connections handed to it: within a few seconds
// the log says so, naming the protocol, and Stats marks it; a worker that
// acks is not marked.
func TestRRUnreadWorkerWarned(t *testing.T) {
	fd, addr := rawTCPListener(t)
	var log testfd.Buffer
	d, err := New([]int{fd}, Config{Window: 4, Log: slog.New(slog.NewTextHandler(&log, nil)), Sys: testSys})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	f := &rrFixture{t: t, d: d, lfds: []int{fd}, addrs: []string{addr}, broken: make(chan rrBrokenReport, 16)}
	good := f.worker(1, true)
	f.worker(2, true) // never reads
	start := time.Now()
	for i := 0; i < 4; i++ {
		f.dial(0)
	}
	for i := 0; i < 2; i++ { // round robin: two each
		m := good.must()
		good.ack(m.seq)
	}
	// Nothing wakes the dispatcher now (no Stats until the warning): its own
	// timeout must bring it.
	for !strings.Contains(log.String(), "rr handoff protocol") {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("no warning after %v:\n%s", time.Since(start), log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if s := f.stat(2); !s.Unread || s.Inflight != 2 {
		t.Errorf("the worker that does not read: %+v, want Unread with 2 in flight", s)
	}
	out := log.String()
	if !strings.Contains(out, "rr handoff protocol") || !strings.Contains(out, "pid=2") || !strings.Contains(out, "pending=2") {
		t.Errorf("no warning naming the protocol, the pid and its pending connections:\n%s", out)
	}
	if strings.Contains(out, "pid=1") || f.stat(1).Unread {
		t.Errorf("the worker that acks was warned of:\n%s", out)
	}
	if n := strings.Count(out, "rr handoff protocol"); n != 1 {
		t.Errorf("%d warnings, want 1:\n%s", n, out)
	}
}
