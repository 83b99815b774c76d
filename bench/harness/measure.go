//go:build unix

// This file drives the load generators: wrk for requests/s and p99 latency,
// bench/load for per-worker counts, and a plain GET to see that a contender
// answers. Everything targets 127.0.0.1 and is bounded in time.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// wrkResult is what the harness keeps of one wrk run.
type wrkResult struct {
	Requests int // answered in the run
	RPS      float64
	P99ms    float64
	Errors   int
}

var (
	reRPS    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reTotal  = regexp.MustCompile(`(\d+) requests in`)
	reP99    = regexp.MustCompile(`(?m)^\s+99%\s+([0-9.]+)(us|ms|s)\s*$`)
	reErrors = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	reNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// runWrk runs wrk -t1 against port for d, with or without Connection: close.
// Without wrk, bench/load measures the same (slower client, same for all).
func runWrk(port, conns int, d time.Duration, closeConn bool) (wrkResult, error) {
	if wrkPath == "" {
		l, err := runLoad(port, conns, d, 0, closeConn)
		return wrkResult{Requests: l.Requests, RPS: l.RPS, P99ms: l.P99ms, Errors: l.Errors}, err
	}
	secs := max(1, int(d.Round(time.Second)/time.Second))
	args := []string{"-t1", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(secs) + "s", "--timeout", "5s", "--latency"}
	if closeConn {
		args = append(args, "-H", "Connection: close")
	}
	args = append(args, fmt.Sprintf("http://127.0.0.1:%d/", port))
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+15)*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, wrkPath, args...).CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return parseWrk(string(out))
}

func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	m := reRPS.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk: no Requests/sec in %q", out)
	}
	r.RPS, _ = strconv.ParseFloat(m[1], 64)
	if m := reTotal.FindStringSubmatch(out); m != nil {
		r.Requests, _ = strconv.Atoi(m[1])
	}
	if m := reP99.FindStringSubmatch(out); m != nil {
		v, _ := strconv.ParseFloat(m[1], 64)
		switch m[2] {
		case "us":
			v /= 1000
		case "s":
			v *= 1000
		}
		r.P99ms = v
	}
	if m := reErrors.FindStringSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.Atoi(s)
			r.Errors += n
		}
	}
	if m := reNon2xx.FindStringSubmatch(out); m != nil {
		n, _ := strconv.Atoi(m[1])
		r.Errors += n
	}
	return r, nil
}

// loadResult is bench/load's JSON.
type loadResult struct {
	Requests int            `json:"requests"`
	Errors   int            `json:"errors"`
	RPS      float64        `json:"rps"`
	P99ms    float64        `json:"p99_ms"`
	PerPid   map[string]int `json:"per_pid"`
}

// runLoad runs bench/load, paced to rate if > 0; the per-worker counts use
// Connection: close, so that every request is a new connection the kernel or
// the supervisor places.
func runLoad(port, conns int, d time.Duration, rate float64, closeConn bool) (loadResult, error) {
	var r loadResult
	args := []string{"-url", fmt.Sprintf("http://127.0.0.1:%d/", port), "-c", strconv.Itoa(conns),
		"-d", d.String(), "-close=" + strconv.FormatBool(closeConn), "-rate", strconv.FormatFloat(rate, 'f', 0, 64)}
	ctx, cancel := context.WithTimeout(context.Background(), d+20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binPath("load"), args...).Output()
	if err != nil {
		return r, fmt.Errorf("load %s: %v", strings.Join(args, " "), err)
	}
	return r, json.Unmarshal(out, &r)
}

// getPid does one GET with Connection: close and returns the pid in the answer.
func getPid(port int, timeout time.Duration) (string, error) {
	c := http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(bufio.NewReader(io.LimitReader(resp.Body, 4096)))
	if err != nil {
		return "", err
	}
	_, pid, ok := strings.Cut(strings.TrimSpace(string(b)), "pid=")
	if !ok {
		return "", fmt.Errorf("unexpected answer %q", b)
	}
	return pid, nil
}

// waitAnswer polls until the contender answers, it exits, or timeout passes.
func waitAnswer(port int, p *proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if p != nil && p.exited() {
			return fmt.Errorf("exited before answering: %s", lastLines(p.stderr.String(), 5))
		}
		if _, err = getPid(port, 500*time.Millisecond); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no answer on port %d after %v: %v", port, timeout, err)
}

// counts turns per-pid counts into one count per worker, padding with zeros
// for workers that got nothing (the harness knows there are n).
func counts(perPid map[string]int, n int) []int {
	var cs []int
	for _, c := range perPid {
		cs = append(cs, c)
	}
	for len(cs) < n {
		cs = append(cs, 0)
	}
	return cs
}
