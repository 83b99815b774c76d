// Command upgrade measures prefork's in-place upgrade (prefork --ctl PATH
// upgrade): the time from the request to the new image serving (the client's
// exit 0, which the new image sends once it has taken the workers over), and
// the latency of requests across it against a baseline before it.
//
//	go build -o /tmp/prefork .. && go run ./upgrade -prefork /tmp/prefork
//
// prefork runs the demo worker from a copy of the binary; a fresh copy is
// renamed over it before each upgrade, as a package manager installs one.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"
)

type sample struct {
	start time.Time
	took  time.Duration
	err   error
}

func main() {
	bin := flag.String("prefork", "", "the prefork binary")
	workers := flag.Int("n", 4, "workers")
	clients := flag.Int("c", 8, "concurrent clients, a new connection per request")
	rounds := flag.Int("rounds", 5, "upgrades")
	flag.Parse()
	if *bin == "" {
		fmt.Fprintln(os.Stderr, "usage: upgrade -prefork PATH")
		os.Exit(2)
	}
	dir, _ := os.MkdirTemp("", "prefork-upgrade-bench.")
	defer os.RemoveAll(dir)
	exe, ctl, status := filepath.Join(dir, "prefork"), filepath.Join(dir, "ctl.sock"), filepath.Join(dir, "status.json")
	install(*bin, exe)
	cmd := exec.Command(exe, "-l", "127.0.0.1:0", "-n", fmt.Sprint(*workers), "--control", ctl, "--status-file", status, "-q", "--demo")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		panic(err)
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	addr := waitReady(status, *workers)

	var mu sync.Mutex
	var samples []sample
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < *clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			for {
				select {
				case <-stop:
					return
				default:
				}
				t := time.Now()
				resp, err := c.Get("http://" + addr + "/")
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				mu.Lock()
				samples = append(samples, sample{t, time.Since(t), err})
				mu.Unlock()
			}
		}()
	}
	type window struct{ from, to time.Time }
	var ups []window
	time.Sleep(time.Second)
	for r := 0; r < *rounds; r++ {
		install(*bin, exe)
		t0 := time.Now()
		out, err := exec.Command(exe, "--ctl", ctl, "upgrade", "--timeout", "60s").CombinedOutput()
		t1 := time.Now()
		if err != nil {
			fmt.Fprintf(os.Stderr, "upgrade %d: %v: %s", r, err, out)
			os.Exit(1)
		}
		ups = append(ups, window{t0, t1})
		time.Sleep(time.Second)
	}
	close(stop)
	wg.Wait()

	var base, across []time.Duration
	failed := 0
	for _, s := range samples {
		if s.err != nil {
			failed++
			continue
		}
		in := false
		for _, w := range ups {
			// a request overlaps an upgrade if it ran at any time from the request to the new image's answer
			if s.start.Before(w.to) && s.start.Add(s.took).After(w.from) {
				in = true
			}
		}
		if in {
			across = append(across, s.took)
		} else if s.start.Before(ups[0].from) {
			base = append(base, s.took)
		}
	}
	fmt.Printf("%d workers, %d clients, %d upgrades, %d requests, %d failed\n", *workers, *clients, len(ups), len(samples), failed)
	for i, w := range ups {
		fmt.Printf("upgrade %d: %v from the request to the new image's answer\n", i+1, w.to.Sub(w.from).Round(100*time.Microsecond))
	}
	fmt.Printf("baseline (before the first upgrade): %s\n", summary(base))
	fmt.Printf("requests overlapping an upgrade:     %s\n", summary(across))
}

func summary(d []time.Duration) string {
	if len(d) == 0 {
		return "none"
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	q := func(p float64) time.Duration { return d[int(p*float64(len(d)-1))].Round(10 * time.Microsecond) }
	return fmt.Sprintf("n=%d p50 %v p99 %v max %v", len(d), q(0.5), q(0.99), d[len(d)-1].Round(10*time.Microsecond))
}

// install copies src to dst as a package manager does: a new file renamed over the old.
func install(src, dst string) {
	b, err := os.ReadFile(src)
	if err != nil {
		panic(err)
	}
	if err := os.WriteFile(dst+".new", b, 0o755); err != nil {
		panic(err)
	}
	if err := os.Rename(dst+".new", dst); err != nil {
		panic(err)
	}
}

func waitReady(status string, n int) string {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var st struct {
			Listeners []string `json:"listeners"`
			Workers   []struct {
				State string `json:"state"`
			} `json:"workers"`
		}
		b, err := os.ReadFile(status)
		if err != nil || json.Unmarshal(b, &st) != nil || len(st.Workers) != n || len(st.Listeners) == 0 {
			continue
		}
		ready := 0
		for _, w := range st.Workers {
			if w.State == "ready" {
				ready++
			}
		}
		if ready == n {
			return st.Listeners[0]
		}
	}
	fmt.Fprintln(os.Stderr, "prefork's workers were not ready in 30s")
	os.Exit(1)
	return ""
}
