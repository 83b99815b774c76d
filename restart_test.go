//go:build linux || darwin

// This file tests the restart policy on its own.
package main

import (
	"testing"
	"time"
)

func TestRestartPolicy(t *testing.T) {
	p := restartPolicy{minUptime: time.Second, backoffMin: 100 * time.Millisecond, backoffMax: time.Second, maxRestarts: 5}
	want := []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond,
		800 * time.Millisecond, time.Second, time.Second}
	for f, w := range want {
		if got := p.delay(f); got != w {
			t.Errorf("delay(%d) = %v, want %v", f, got, w)
		}
	}
	p.jitter = func() float64 { return 1 }
	if got := p.delay(3); got != 320*time.Millisecond {
		t.Errorf("delay with full jitter = %v, want 320ms (20%% below 400ms)", got)
	}
	if got := p.delay(1); got != 100*time.Millisecond {
		t.Errorf("jitter must never go below --backoff-min: got %v", got)
	}
	if !p.failedStart(false, time.Hour) || !p.failedStart(true, 10*time.Millisecond) || p.failedStart(true, 2*time.Second) {
		t.Error("failedStart: a worker never ready, or up less than min-uptime, is a failed start; others are not")
	}
	if p.givesUp(4) || !p.givesUp(5) {
		t.Error("givesUp must trip at --max-restarts")
	}
	p.maxRestarts = 0
	if p.givesUp(1 << 20) {
		t.Error("--max-restarts 0 must never give up")
	}
}
