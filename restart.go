//go:build linux || darwin

// This file holds the restart policy: which exits count as failed starts, the
// exponential backoff between them, and when a crash loop makes prefork give up.
package main

import (
	"math/rand/v2"
	"time"
)

// restartPolicy is the part of the configuration that decides restarts.
type restartPolicy struct {
	minUptime   time.Duration
	backoffMin  time.Duration
	backoffMax  time.Duration
	maxRestarts int // 0 = never give up
	jitter      func() float64
}

func newRestartPolicy(c *config) restartPolicy {
	return restartPolicy{c.minUptime, c.backoffMin, c.backoffMax, c.maxRestarts, rand.Float64}
}

// failedStart says whether an exit counts as a failed start: the worker never
// came up, or exited sooner than --min-uptime.
func (p restartPolicy) failedStart(wasReady bool, uptime time.Duration) bool {
	return !wasReady || uptime < p.minUptime
}

// givesUp says whether this many failed starts in a row end prefork.
func (p restartPolicy) givesUp(failures int) bool {
	return p.maxRestarts > 0 && failures >= p.maxRestarts
}

// delay is the wait before the next start after `failures` failed starts in a
// row: none after a worker that ran properly, then backoffMin doubling up to
// backoffMax, with up to 20% jitter below the nominal value so that slots that
// crashed together do not restart in lockstep.
func (p restartPolicy) delay(failures int) time.Duration {
	if failures <= 0 {
		return 0
	}
	d := p.backoffMin
	for i := 1; i < failures && d < p.backoffMax; i++ {
		d *= 2
	}
	d = min(d, p.backoffMax)
	j := 1.0
	if p.jitter != nil {
		j -= 0.2 * p.jitter()
	}
	return max(time.Duration(float64(d)*j), p.backoffMin)
}
