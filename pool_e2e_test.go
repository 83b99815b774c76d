//go:build linux || darwin

// This file tests the pool with real processes in every mode: a blocking worker
// (one request at a time, as a C accept loop or a sync Python server) makes an
// elastic pool grow and shrink, a leaking one is replaced under --max-rss, old
// ones under --max-lifetime, and a replacement that cannot come up leaves the
// old worker serving.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prefork/prefork/internal/pool"
	"github.com/prefork/prefork/internal/procstat"
	pw "github.com/prefork/prefork/worker"
)

func init() {
	extraRoles["blocking"] = blockingWorker
}

// blockingWorker serves one HTTP request at a time, answering with its pid
// after TESTWORKER_DELAY (default 200ms), and keeps TESTWORKER_GROW_MB more
// megabytes resident after each request. In shared and reuseport mode it calls
// a blocking accept on fd 3, as a C worker does; in rr mode it takes one
// connection at a time from the worker package. On SIGTERM it finishes the
// request in hand and exits.
func blockingWorker() int {
	if f := os.Getenv("TESTWORKER_FAIL_IF"); f != "" {
		if _, err := os.Stat(f); err == nil {
			return 4
		}
	}
	delay := 200 * time.Millisecond
	if v := os.Getenv("TESTWORKER_DELAY"); v != "" {
		delay, _ = time.ParseDuration(v)
	}
	grow, _ := strconv.Atoi(os.Getenv("TESTWORKER_GROW_MB"))
	var hog [][]byte
	serve := func(c io.ReadWriteCloser) {
		defer c.Close()
		var req []byte
		buf := make([]byte, 4096)
		for !strings.Contains(string(req), "\r\n\r\n") && len(req) < 1<<16 {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			req = append(req, buf[:n]...)
		}
		time.Sleep(delay)
		if grow > 0 {
			b := make([]byte, grow<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			hog = append(hog, b)
		}
		body := strconv.Itoa(os.Getpid())
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	}
	var term atomic.Bool
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	if os.Getenv("PREFORK_MODE") == "rr" {
		ls, err := pw.Listeners()
		if err != nil {
			fmt.Fprintln(os.Stderr, "blocking worker:", err)
			return 3
		}
		go func() { <-sigs; ls[0].Close() }()
		pw.Ready()
		for {
			c, err := ls[0].Accept()
			if err != nil {
				return 0
			}
			serve(c)
		}
	}
	// A blocking accept is not interrupted by a signal that Go handles: a
	// receive timeout on the socket lets the loop look at term ten times a second.
	tv := syscall.Timeval{Usec: 100000}
	if err := syscall.SetsockoptTimeval(3, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		fmt.Fprintln(os.Stderr, "blocking worker:", err)
		return 3
	}
	go func() { <-sigs; term.Store(true) }()
	pw.Ready()
	for !term.Load() {
		fd, _, err := syscall.Accept(3)
		switch err {
		case nil:
			syscall.CloseOnExec(fd)
			// The accepted socket inherits the listener's receive timeout: clear it.
			syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &syscall.Timeval{})
			serve(os.NewFile(uintptr(fd), "conn"))
		case syscall.EAGAIN, syscall.EINTR, syscall.ECONNABORTED:
		default:
			fmt.Fprintln(os.Stderr, "blocking worker: accept:", err)
			return 3
		}
	}
	return 0
}

// poolLoad runs clients that each make one request at a time on a fresh
// connection until stop is closed; it counts failures and records which pids
// answered.
type poolLoad struct {
	mu     sync.Mutex
	total  int
	failed []error
	pids   map[string]int
	wg     sync.WaitGroup
	stop   chan struct{}
}

func startLoad(addr string, clients int) *poolLoad {
	return startLoadOn("tcp", addr, clients)
}

func startLoadOn(network, addr string, clients int) *poolLoad {
	l := &poolLoad{pids: map[string]int{}, stop: make(chan struct{})}
	for i := 0; i < clients; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for n := 0; n < 10000; n++ {
				select {
				case <-l.stop:
					return
				default:
				}
				pid, err := oneRequest(network, addr)
				l.mu.Lock()
				l.total++
				if err != nil {
					l.failed = append(l.failed, err)
				} else {
					l.pids[pid]++
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// oneRequest makes a GET on a fresh connection and returns the body.
func oneRequest(network, addr string) (string, error) {
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	head, body, ok := strings.Cut(string(b), "\r\n\r\n")
	if !ok || !strings.HasPrefix(head, "HTTP/1.1 200 ") || body == "" {
		return "", fmt.Errorf("bad response %q", b)
	}
	return body, nil
}

// end stops the clients and returns the requests made, failures and the pids
// that answered.
func (l *poolLoad) end() (int, []error, map[string]int) {
	close(l.stop)
	l.wg.Wait()
	return l.total, l.failed, l.pids
}

// countReady counts the ready workers, and reports whether none is starting or stopping.
func countReady(st statusFile) (int, bool) {
	n, settled := 0, true
	for _, w := range st.Workers {
		if w.State == "ready" {
			n++
		} else {
			settled = false
		}
	}
	return n, settled
}

func TestPoolGrowsUnderLoadAndShrinksWhenIdle(t *testing.T) {
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			in := startPrefork(t, "blocking", []string{"TESTWORKER_DELAY=200ms"}, "--mode", mode, "-p", "0",
				"-n", "1:4", "--idle-timeout", "1s", "--ready", "notify", "--grace", "5s")
			in.readyWorkers(1, 10*time.Second)
			addr := in.addr()
			start := time.Now()
			load := startLoad(addr, 8)
			in.waitFor("4 ready workers under load", 20*time.Second, func(st statusFile) bool {
				n, _ := countReady(st)
				return n == 4
			})
			grew := time.Since(start)
			// Under load at MAX a little longer: until a second worker has
			// answered (reuseport spreads new connections by hash, behind the
			// backlog queued on the first socket), at most 10 s.
			for end := time.Now().Add(10 * time.Second); time.Now().Before(end); {
				time.Sleep(100 * time.Millisecond)
				load.mu.Lock()
				n := len(load.pids)
				load.mu.Unlock()
				if n >= 2 {
					break
				}
			}
			total, failed, pids := load.end()
			if len(failed) > 0 {
				t.Fatalf("%d of %d requests failed, first: %v", len(failed), total, failed[0])
			}
			if len(pids) < 2 { // reuseport spreads by hash: the newest may get none yet
				t.Errorf("only %d workers answered: %v", len(pids), pids)
			}
			stopped := time.Now()
			in.waitFor("back to 1 worker once idle", 20*time.Second, func(st statusFile) bool {
				n, settled := countReady(st)
				return n == 1 && settled
			})
			t.Logf("%s: 1 → 4 workers in %v under 8 clients (%d requests, 0 failed); back to 1 in %v after the load stopped",
				mode, grew.Round(10*time.Millisecond), total, time.Since(stopped).Round(10*time.Millisecond))
			out := in.stderr.String()
			if !strings.Contains(out, "pool: connections wait; adding workers") || !strings.Contains(out, "pool: idle; stopping a worker") {
				t.Errorf("the log does not say why the pool moved")
			}
			if mode != "rr" && procstat.AcceptQueueSupported {
				if st, _ := in.readStatus(); len(st.AcceptQueue) != 1 || st.AcceptQueue[0] == nil {
					t.Errorf("status file has no accept queue: %+v", st.AcceptQueue)
				}
			}
		})
	}
}

// A rolling reload while the pool grows: every slot, old and new, ends in the
// new generation, and no request fails.
func TestPoolReloadWhileGrowing(t *testing.T) {
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			in := startPrefork(t, "blocking", []string{"TESTWORKER_DELAY=100ms"}, "--mode", mode, "-p", "0",
				"-n", "1:4", "--idle-timeout", "30s", "--ready", "notify", "--grace", "5s")
			in.readyWorkers(1, 10*time.Second)
			load := startLoad(in.addr(), 8)
			in.waitFor("the pool growing", 20*time.Second, func(st statusFile) bool { return len(st.Workers) >= 2 })
			in.signal(syscall.SIGHUP)
			st := in.waitFor("4 workers of generation 2", 30*time.Second, func(st statusFile) bool {
				n := 0
				for _, w := range st.Workers {
					if w.Generation == 2 && w.State == "ready" {
						n++
					}
				}
				return n == 4 && len(st.Workers) == 4
			})
			total, failed, _ := load.end()
			if len(failed) > 0 {
				t.Fatalf("%d of %d requests failed, first: %v", len(failed), total, failed[0])
			}
			if !strings.Contains(in.stderr.String(), "reload complete") {
				t.Errorf("the reload did not complete: %+v", st.Workers)
			}
		})
	}
}

func TestPoolGrowsOnAUnixListener(t *testing.T) {
	if !procstat.AcceptQueueSupported {
		t.Skip("no accept queue to read here")
	}
	sock := filepath.Join(t.TempDir(), "s")
	in := startPrefork(t, "blocking", []string{"TESTWORKER_DELAY=200ms"}, "-l", "unix:"+sock,
		"-n", "1:2", "--idle-timeout", "1s", "--ready", "notify", "--grace", "5s")
	in.readyWorkers(1, 10*time.Second)
	load := startLoadOn("unix", sock, 4)
	in.waitFor("2 ready workers under load", 20*time.Second, func(st statusFile) bool {
		n, _ := countReady(st)
		return n == 2
	})
	total, failed, _ := load.end()
	if len(failed) > 0 {
		t.Fatalf("%d of %d requests failed, first: %v", len(failed), total, failed[0])
	}
	in.waitFor("back to 1 worker once idle", 20*time.Second, func(st statusFile) bool {
		n, settled := countReady(st)
		return n == 1 && settled
	})
	if strings.Contains(in.stderr.String(), "cannot be read") {
		t.Errorf("prefork says it cannot read the unix listener's queue")
	}
}

func TestPoolSaysWhatItCannotSee(t *testing.T) {
	in := startPrefork(t, "udp", nil, "-l", "udp:127.0.0.1:0", "-n", "1:2", "--ready-delay", "100ms")
	in.readyWorkers(1, 10*time.Second)
	in.waitFor("a warning at start", 5*time.Second, func(statusFile) bool {
		return strings.Contains(in.stderr.String(), "the pool cannot see connections wait: it stays at 1 workers")
	})
	if procstat.AcceptQueueSupported && !strings.Contains(in.stderr.String(), "the accept queue of udp listener") {
		t.Errorf("no warning names the UDP listener")
	}
}

func TestPoolTTINAndTTOUStayWithinMinMax(t *testing.T) {
	in := startPrefork(t, "blocking", nil, "-p", "0", "-n", "2:3", "--idle-timeout", "1m", "--ready", "notify")
	in.readyWorkers(2, 10*time.Second)
	in.signal(syscall.SIGTTOU)
	in.waitFor("a log line", 5*time.Second, func(statusFile) bool {
		return strings.Contains(in.stderr.String(), "already at the fewest workers")
	})
	in.signal(syscall.SIGTTIN)
	in.readyWorkers(3, 10*time.Second)
	in.signal(syscall.SIGTTIN)
	in.waitFor("a log line", 5*time.Second, func(statusFile) bool {
		return strings.Contains(in.stderr.String(), "already at the most workers")
	})
	if st, _ := in.readStatus(); len(st.Workers) != 3 {
		t.Fatalf("workers %d, want 3", len(st.Workers))
	}
}

// replacedBy waits until the status file shows n workers replaced for why, and
// returns the last status.
func replacedBy(in *instance, why string, n int, timeout time.Duration) statusFile {
	in.t.Helper()
	return in.waitFor(fmt.Sprintf("%d workers replaced for %s", n, why), timeout, func(st statusFile) bool {
		k := 0
		for _, w := range st.Workers {
			if w.Replaced == why && w.State == "ready" {
				k++
			}
		}
		return k >= n
	})
}

func TestPoolMaxRSSReplacesALeakingWorker(t *testing.T) {
	if !procstat.Supported {
		t.Skip("no /proc here")
	}
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			in := startPrefork(t, "blocking", []string{"TESTWORKER_DELAY=100ms", "TESTWORKER_GROW_MB=10"}, "--mode", mode,
				"-p", "0", "-n", "2", "--max-rss", "150M", "--ready", "notify", "--grace", "5s")
			st := in.readyWorkers(2, 10*time.Second)
			first := map[int]bool{st.Workers[0].PID: true, st.Workers[1].PID: true}
			load := startLoad(in.addr(), 2)
			st = replacedBy(in, pool.ReasonMaxRSS, 2, 30*time.Second)
			total, failed, pids := load.end()
			if len(failed) > 0 {
				t.Fatalf("%d of %d requests failed, first: %v", len(failed), total, failed[0])
			}
			for _, w := range st.Workers {
				if first[w.PID] && w.State != "stopping" {
					t.Errorf("first worker %d still serves: %+v", w.PID, st.Workers)
				}
			}
			if !strings.Contains(in.stderr.String(), "why=max-rss") {
				t.Errorf("the log does not say why a worker was replaced")
			}
			t.Logf("%s: %d requests, 0 failed, %d workers answered", mode, total, len(pids))
		})
	}
}

func TestPoolMaxLifetimeReplacesOldWorkers(t *testing.T) {
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			in := startPrefork(t, "blocking", []string{"TESTWORKER_DELAY=20ms"}, "--mode", mode,
				"-p", "0", "-n", "2", "--max-lifetime", "1500ms", "--ready", "notify", "--grace", "5s")
			st := in.readyWorkers(2, 10*time.Second)
			first := map[int]bool{st.Workers[0].PID: true, st.Workers[1].PID: true}
			load := startLoad(in.addr(), 4)
			st = replacedBy(in, pool.ReasonMaxLifetime, 2, 20*time.Second)
			time.Sleep(time.Second) // and more, under load
			total, failed, pids := load.end()
			if len(failed) > 0 {
				t.Fatalf("%d of %d requests failed, first: %v", len(failed), total, failed[0])
			}
			for _, w := range st.Workers {
				if first[w.PID] && w.State != "stopping" {
					t.Errorf("first worker %d still serves after its lifetime: %+v", w.PID, st.Workers)
				}
			}
			if len(pids) < 3 {
				t.Errorf("only %d workers answered in about 3 lifetimes: %v", len(pids), pids)
			}
			t.Logf("%s: %d requests, 0 failed, %d workers answered", mode, total, len(pids))
		})
	}
}

func TestPoolFailedReplacementKeepsTheOldWorker(t *testing.T) {
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			broken := filepath.Join(t.TempDir(), "broken")
			in := startPrefork(t, "blocking", []string{"TESTWORKER_DELAY=20ms", "TESTWORKER_FAIL_IF=" + broken}, "--mode", mode,
				"-p", "0", "-n", "1", "--max-lifetime", "1s", "--ready", "notify", "--backoff-min", "200ms", "--backoff-max", "400ms")
			st := in.readyWorkers(1, 10*time.Second)
			old := st.Workers[0].PID
			os.WriteFile(broken, nil, 0o644) // every new worker now exits at once
			load := startLoad(in.addr(), 2)
			in.waitFor("two failed replacements", 15*time.Second, func(statusFile) bool {
				return strings.Count(in.stderr.String(), "replacement failed; the old worker keeps serving") >= 2
			})
			total, failed, pids := load.end()
			if len(failed) > 0 {
				t.Fatalf("%d of %d requests failed, first: %v", len(failed), total, failed[0])
			}
			if len(pids) != 1 || pids[strconv.Itoa(old)] == 0 {
				t.Fatalf("answers came from %v, want only the old worker %d", pids, old)
			}
			st = in.waitFor("the old worker, alone ready", 5*time.Second, func(st statusFile) bool {
				ready := 0
				for _, w := range st.Workers {
					if w.State == "ready" {
						ready++
					}
				}
				return ready == 1 && pidAlive(old) // a replacement may be starting beside it
			})
			for _, w := range st.Workers {
				if w.State == "ready" && w.PID != old {
					t.Fatalf("a new worker serves: %+v", st.Workers)
				}
			}
			// Once a new worker can start, the replacement goes through.
			os.Remove(broken)
			replacedBy(in, pool.ReasonMaxLifetime, 1, 10*time.Second)
		})
	}
}
