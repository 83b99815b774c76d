//go:build linux

// This file holds the suite's load: bounded loopback HTTP clients, either on
// keep-alive connections (net/http, as most clients are) or one fresh
// connection per request (a raw client that writes down each failed
// connection's local port, to look it up in the workers' records).
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"sort"
	"strings"
	"sync"
	"time"
)

// failure is one failed request: what went wrong, and for the raw client the
// connection's local port and when it was dialled and given up.
type failure struct {
	err        string
	port       int
	from, till time.Time
}

// result sums up one load run.
type result struct {
	requests int
	failed   []failure
	retries  int // net/http's own silent retries on a reused connection
}

func (r *result) add(o result) {
	r.requests += o.requests
	r.failed = append(r.failed, o.failed...)
	r.retries += o.retries
}

// errorKinds counts failures by message, most frequent first.
func (r result) errorKinds() string {
	n := map[string]int{}
	for _, f := range r.failed {
		n[f.err]++
	}
	var ks []string
	for k := range n {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return n[ks[i]] > n[ks[j]] })
	var out []string
	for i, k := range ks {
		if i == 3 {
			out = append(out, "...")
			break
		}
		out = append(out, fmt.Sprintf("%dx %s", n[k], k))
	}
	return strings.Join(out, "; ")
}

// maxPerClient bounds every load loop in count as well as in time.
const maxPerClient = 200000

// runLoad starts clients until stop is closed and returns their sum.
func runLoad(addr string, clients int, keepAlive bool, stop <-chan struct{}) result {
	var mu sync.Mutex
	var total result
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var r result
			if keepAlive {
				r = keepAliveClient(addr, stop)
			} else {
				r = churnClient(addr, stop)
			}
			mu.Lock()
			total.add(r)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return total
}

func keepAliveClient(addr string, stop <-chan struct{}) result {
	var r result
	tr := &http.Transport{MaxIdleConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	c := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	for n := 0; n < maxPerClient; n++ {
		select {
		case <-stop:
			return r
		default:
		}
		attempts := 0
		trace := &httptrace.ClientTrace{GetConn: func(string) { attempts++ }}
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
		resp, err := c.Do(req)
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode != 200 {
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
		}
		r.requests++
		if attempts > 1 {
			r.retries += attempts - 1
		}
		if err != nil {
			r.failed = append(r.failed, failure{err: shortErr(err)})
		}
	}
	return r
}

// churnClient makes one request per connection and reads the answer to the end.
func churnClient(addr string, stop <-chan struct{}) result {
	var r result
	for n := 0; n < maxPerClient; n++ {
		select {
		case <-stop:
			return r
		default:
		}
		r.requests++
		from := time.Now()
		port, err := oneRequest(addr)
		if err != nil {
			r.failed = append(r.failed, failure{err: shortErr(err), port: port, from: from, till: time.Now()})
		}
	}
	return r
}

func oneRequest(addr string) (port int, err error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	port = c.LocalAddr().(*net.TCPAddr).Port
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: reliability\r\nConnection: close\r\n\r\n"); err != nil {
		return port, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return port, err
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	return port, err
}

// shortErr drops addresses and ports from an error, so that errors group by kind.
func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && strings.Contains(s[:i], "127.0.0.1") {
		s = s[i+2:]
	}
	return s
}
