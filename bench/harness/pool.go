//go:build unix

// This file measures the elastic pool: a blocking worker (bench/blockserver,
// one request at a time, 50 ms each) under a step load, with -n 1, -n 8 and
// -n 1:8. The load is open-loop: each request leaves at its scheduled time on a
// fresh connection whether or not earlier ones were answered, and its latency
// counts from that time, so queueing shows in full (no coordinated omission).
package main

import (
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prefork/prefork/bench/internal/results"
)

// poolStep is the load: base req/s for a while, then step req/s, both paced
// evenly. At 50 ms a request, 60 req/s keeps 3 workers busy: 1 worker falls
// behind by 40 req/s, 8 keep up, 1:8 must grow.
type poolStep struct {
	service    time.Duration
	base, step float64
	baseFor    time.Duration
	stepFor    time.Duration
}

// poolBench runs each pool size reps times, interleaved.
func poolBench(res *results.Results, reps int, smoke bool) error {
	ld := poolStep{service: 50 * time.Millisecond, base: 5, step: 60, baseFor: 2 * time.Second, stepFor: 5 * time.Second}
	if smoke {
		ld.baseFor, ld.stepFor = 500*time.Millisecond, 1500*time.Millisecond
	}
	res.PoolLoad = fmt.Sprintf("bench/blockserver (blocking accept, %v a request) under prefork --mode shared --ready notify; "+
		"open-loop load on fresh connections: %.0f req/s for %v, then a step to %.0f req/s for %v",
		ld.service, ld.base, ld.baseFor, ld.step, ld.stepFor)
	type contender struct{ name, n string }
	cs := []contender{{"-n 1", "1"}, {"-n 8", "8"}, {"-n 1:8", "1:8"}}
	rows := map[string]*results.PoolRow{}
	for _, c := range cs {
		rows[c.name] = &results.PoolRow{Name: "prefork " + c.name}
	}
	for rep := 0; rep < reps; rep++ {
		for k := range cs {
			c := cs[(k+rep)%len(cs)]
			initial := 8
			if strings.HasPrefix(c.n, "1") {
				initial = 1
			}
			port := nextPort()
			p, err := startPrefork(port, initial, "shared", []string{"-n", c.n, "--ready", "notify", "--grace", "5s"},
				binPath("blockserver"), "-delay", ld.service.String())
			if err != nil {
				return fmt.Errorf("pool, prefork %s: %w", c.name, err)
			}
			r, err := runStep(port, ld)
			workers := 0
			if st, err := readStatus(statusPath(port)); err == nil {
				workers = st.readyCount()
			}
			p.Stop()
			if err != nil {
				return fmt.Errorf("pool, prefork %s: %w", c.name, err)
			}
			row := rows[c.name]
			row.P99ms = append(row.P99ms, r.p99)
			row.MaxMs = append(row.MaxMs, r.max)
			row.Failed = append(row.Failed, float64(r.failed))
			row.CapacityMs = append(row.CapacityMs, r.capacity)
			row.Workers = append(row.Workers, float64(workers))
			logf("pool %-8s step p99 %7.1f ms, max %7.1f ms, %d failed, queue empty again %6.0f ms after the step, %d workers at the end",
				c.name, r.p99, r.max, r.failed, r.capacity, workers)
		}
	}
	for _, c := range cs {
		res.Pool = append(res.Pool, *rows[c.name])
	}
	return nil
}

type stepResult struct {
	p99, max float64 // ms, of the requests sent during the step
	failed   int
	capacity float64 // ms from the step to the last request sent that waited for a worker; -1: never caught up
}

// runStep sends the step load to port and measures it.
func runStep(port int, ld poolStep) (stepResult, error) {
	type sample struct {
		sent time.Duration // scheduled, from the step
		lat  time.Duration
		err  error
	}
	var (
		mu      sync.Mutex
		samples []sample
		wg      sync.WaitGroup
	)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	start := time.Now()
	stepAt := start.Add(ld.baseFor)
	end := stepAt.Add(ld.stepFor)
	for at := start; at.Before(end); {
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func(at time.Time) {
			defer wg.Done()
			err := poolGet(addr)
			s := sample{sent: at.Sub(stepAt), lat: time.Since(at), err: err}
			mu.Lock()
			samples = append(samples, s)
			mu.Unlock()
		}(at)
		rate := ld.base
		if !at.Before(stepAt) {
			rate = ld.step
		}
		at = at.Add(time.Duration(float64(time.Second) / rate))
	}
	wg.Wait()
	var r stepResult
	var lats []float64
	for _, s := range samples {
		if s.err != nil {
			r.failed++
			continue
		}
		if s.sent < 0 {
			continue
		}
		ms := float64(s.lat) / 1e6
		lats = append(lats, ms)
		r.max = max(r.max, ms)
		if s.lat > ld.service+100*time.Millisecond { // waited for a worker, beyond scheduling noise
			r.capacity = max(r.capacity, float64(s.sent)/1e6)
		}
	}
	if len(lats) == 0 {
		return r, fmt.Errorf("no request answered")
	}
	slices.Sort(lats)
	r.p99 = lats[len(lats)*99/100]
	if r.capacity >= 0.9*float64(ld.stepFor)/1e6 {
		r.capacity = -1 // still waiting at the end of the step: never caught up
	}
	return r, nil
}

// poolGet makes one request on a fresh connection; a request may wait long in
// the accept queue of an overloaded pool, so the bound is generous.
func poolGet(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"); err != nil {
		return err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(string(b), "HTTP/1.1 200 ") {
		return fmt.Errorf("answer %q", b)
	}
	return nil
}
