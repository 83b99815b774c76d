// Command load is the benchmarks' small HTTP load client: C connections (or,
// with -close, C loops of one request per connection) against one loopback
// URL for a bounded time and count, optionally paced to a total rate, counting
// answers per worker by the "pid=" the benchmark servers put in their body.
// It prints one JSON object: requests, errors, rate, p99 and the per-pid counts.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// Result is what load prints.
type Result struct {
	Requests int            `json:"requests"`
	Errors   int            `json:"errors"`
	Seconds  float64        `json:"seconds"`
	RPS      float64        `json:"rps"`
	P50ms    float64        `json:"p50_ms"`
	P99ms    float64        `json:"p99_ms"`
	PerPid   map[string]int `json:"per_pid"`
}

func main() {
	target := flag.String("url", "http://127.0.0.1:8080/", "loopback URL to load")
	conns := flag.Int("c", 16, "concurrent connections")
	dur := flag.Duration("d", 3*time.Second, "duration")
	rate := flag.Float64("rate", 0, "total requests per second (0: as fast as possible)")
	closeConn := flag.Bool("close", false, "one request per connection (Connection: close)")
	maxReq := flag.Int("max", 2_000_000, "stop after this many requests")
	sources := flag.Int("sources", 0, "N > 0: connection loop i connects from 127.0.0.(2+i%N), so that --balance source sees N clients (Linux loopback)")
	flag.Parse()
	u, err := url.Parse(*target)
	if err != nil || !isLoopback(u.Hostname()) {
		fmt.Fprintln(os.Stderr, "load: -url must be a loopback http URL")
		os.Exit(2)
	}
	tr := &http.Transport{
		DisableKeepAlives:   *closeConn,
		MaxIdleConnsPerHost: *conns,
		DisableCompression:  true,
	}
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	clientFor := func(i int) *http.Client {
		if *sources <= 0 {
			return client
		}
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%*sources))}}
		t := tr.Clone()
		t.DialContext = d.DialContext
		return &http.Client{Transport: t, Timeout: 5 * time.Second}
	}

	var (
		mu       sync.Mutex
		res      = Result{PerPid: map[string]int{}}
		lats     []time.Duration
		budget   = *maxReq
		wg       sync.WaitGroup
		start    = time.Now()
		deadline = start.Add(*dur)
	)
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var interval time.Duration
			if *rate > 0 {
				interval = time.Duration(float64(*conns) / *rate * float64(time.Second))
			}
			next := start.Add(time.Duration(i) * interval / time.Duration(*conns))
			client := clientFor(i)
			local := map[string]int{}
			var myLats []time.Duration
			errs := 0
			for {
				if interval > 0 {
					if d := time.Until(next); d > 0 {
						time.Sleep(d)
					}
					next = next.Add(interval)
				}
				t0 := time.Now()
				if t0.After(deadline) {
					break
				}
				mu.Lock()
				if budget == 0 {
					mu.Unlock()
					break
				}
				budget--
				mu.Unlock()
				pid, err := get(client, *target)
				if err != nil {
					errs++
					continue
				}
				myLats = append(myLats, time.Since(t0))
				local[pid]++
			}
			mu.Lock()
			defer mu.Unlock()
			for k, v := range local {
				res.PerPid[k] += v
				res.Requests += v
			}
			res.Errors += errs
			lats = append(lats, myLats...)
		}(i)
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.RPS = float64(res.Requests) / res.Seconds
	if len(lats) > 0 {
		slices.Sort(lats)
		res.P50ms = float64(lats[len(lats)/2]) / 1e6
		res.P99ms = float64(lats[(len(lats)*99)/100]) / 1e6
	}
	json.NewEncoder(os.Stdout).Encode(res)
}

// get does one request and returns the pid the server named.
func get(c *http.Client, u string) (string, error) {
	resp, err := c.Get(u)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("status %d", resp.StatusCode)
	}
	_, pid, ok := strings.Cut(strings.TrimSpace(string(b)), "pid=")
	if !ok {
		return "?", nil
	}
	return pid, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
