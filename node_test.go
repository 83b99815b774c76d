//go:build linux || darwin

// End-to-end tests of prefork as the Node.js cluster primary, with a real
// node (PREFORK_NODE, else node on PATH; scripts/node-versions.sh fetches one
// per major, and CI runs these tests once per major). The apps in
// testdata/node are ordinary Node programs that know nothing of prefork.
//
// This file holds the helpers and the tests of the modes and listen forms;
// node_reload_test.go and node_apps_test.go hold the rest.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// nodeBinary is the node the tests run: PREFORK_NODE, else node on PATH.
func nodeBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PREFORK_NODE"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("PREFORK_NODE=%s: %v", p, err)
		}
		return p
	}
	p, err := exec.LookPath("node")
	if err != nil {
		t.Skip("no node: set PREFORK_NODE or put node on PATH (scripts/node-versions.sh fetches one)")
	}
	return p
}

// nodeMajor is the major version of the node under test.
func nodeMajor(t *testing.T) int {
	t.Helper()
	out, err := exec.Command(nodeBinary(t), "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	v, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimSpace(string(out)), "v"), ".")
	n, _ := strconv.Atoi(v)
	return n
}

// nodeApp is the absolute path of a file under testdata/node.
func nodeApp(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("testdata", "node", name))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// startNode runs prefork with args and then node app; env goes to prefork and
// so to the workers.
//
// --ready-delay is long, so that a worker is up when it says listening and
// not because a loaded machine took a second to start node.
func startNode(t *testing.T, app string, env []string, args ...string) *instance {
	t.Helper()
	args = append(append([]string{"--ready-delay", "60s"}, args...), "--", nodeBinary(t), nodeApp(t, app))
	return startPrefork(t, "", env, args...)
}

// freePort returns a TCP port nothing holds right now, for an app that binds
// its own port (node's listen(PORT)). It picks from below the kernel's
// ephemeral range: a port that Listen(":0") hands out comes from that range and
// can become the local end of any outgoing connection on the machine before the
// app binds it (EADDRINUSE with nothing listening; CI met that).
func freePort(t *testing.T) int {
	t.Helper()
	lo := 32768 // Linux's default; macOS starts at 49152
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 12000 {
				lo = n
			}
		}
	}
	for range 100 {
		port := 10000 + rand.IntN(lo-10000)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no free port below the ephemeral range")
	return 0
}

// fetch makes one request on a fresh connection and returns the body.
func fetch(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return string(b), err
}

var closeClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// nodeStop stops prefork with TERM and checks that it exits 0 well before
// --grace: the workers got disconnect and closed their channel.
func nodeStop(t *testing.T, in *instance) {
	t.Helper()
	start := time.Now()
	in.signal(syscall.SIGTERM)
	if code := in.wait(15 * time.Second); code != 0 {
		t.Fatalf("prefork exited with %d after TERM, want 0", code)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("stopping took %v: the workers did not leave after disconnect", d)
	}
}

func TestNodeServesUnmodifiedApp(t *testing.T) {
	nodeBinary(t)
	for _, mode := range modes() {
		for _, withPort := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/p=%v", mode, withPort), func(t *testing.T) {
				port := freePort(t)
				// A long --ready-delay: the workers are up because they said listening.
				args := []string{"-n", "2", "--mode", mode, "--grace", "30s"}
				if withPort {
					args = append(args, "-p", strconv.Itoa(port))
				}
				// An inherited NODE_CHANNEL_SERIALIZATION_MODE=advanced must not reach the workers.
				in := startNode(t, "app.js", []string{"APP_LISTEN=" + strconv.Itoa(port), "NODE_CHANNEL_SERIALIZATION_MODE=advanced"}, args...)
				in.readyWorkers(2, 20*time.Second)
				url := fmt.Sprintf("http://127.0.0.1:%d/", port)
				ids := map[string]bool{}
				for i := 0; i < 10; i++ {
					body, err := fetch(closeClient, url+"id")
					if err != nil {
						t.Fatal(err)
					}
					var id struct {
						IsPrimary     bool
						ID            int
						Slot, Channel string
						Mode          *string
					}
					if err := json.Unmarshal([]byte(body), &id); err != nil {
						t.Fatalf("/id: %q: %v", body, err)
					}
					if id.IsPrimary || strconv.Itoa(id.ID-1) != id.Slot || id.Mode != nil {
						t.Fatalf("/id: %s: want a cluster worker with id = slot+1 and no serialization mode", body)
					}
					ids[body] = true
				}
				pids := map[string]int{}
				var order []string
				for i := 0; i < 40; i++ {
					body, err := fetch(closeClient, url)
					if err != nil {
						t.Fatalf("request %d: %v", i, err)
					}
					pids[body]++
					order = append(order, body)
				}
				if mode == "rr" {
					// Round robin: exactly alternating between the two workers.
					if len(pids) != 2 {
						t.Fatalf("rr spread %v: want two workers", pids)
					}
					for i := 2; i < len(order); i++ {
						if order[i] != order[i-2] || order[i] == order[i-1] {
							t.Fatalf("rr order %v: want strict alternation", order)
						}
					}
				}
				nodeStop(t, in)
			})
		}
	}
}

func TestNodeListenFd3(t *testing.T) {
	for _, mode := range []string{"shared", "rr"} {
		t.Run(mode, func(t *testing.T) {
			port := freePort(t)
			in := startNode(t, "app.js", []string{"APP_LISTEN=fd:3"}, "-n", "2", "--mode", mode, "-p", strconv.Itoa(port))
			in.readyWorkers(2, 20*time.Second)
			for i := 0; i < 10; i++ {
				if _, err := fetch(closeClient, fmt.Sprintf("http://127.0.0.1:%d/", port)); err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
			}
			nodeStop(t, in)
		})
	}
}

func TestNodeUnixPath(t *testing.T) {
	for _, mode := range []string{"shared", "rr"} {
		for _, withListen := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/l=%v", mode, withListen), func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "app.sock")
				args := []string{"-n", "2", "--mode", mode}
				if withListen {
					args = append(args, "-l", "unix:"+path)
				}
				in := startNode(t, "app.js", []string{"APP_LISTEN=" + path}, args...)
				in.readyWorkers(2, 20*time.Second)
				c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
					Dial: func(_, _ string) (net.Conn, error) { return net.Dial("unix", path) }}}
				pids := map[string]int{}
				for i := 0; i < 20; i++ {
					body, err := fetch(c, "http://app/")
					if err != nil {
						t.Fatalf("request %d: %v", i, err)
					}
					pids[body]++
				}
				if mode == "rr" && (len(pids) != 2 || pids[firstKey(pids)] != 10) {
					t.Fatalf("rr spread %v: want 10 each", pids)
				}
				nodeStop(t, in)
			})
		}
	}
}

func firstKey(m map[string]int) string {
	for k := range m {
		return k
	}
	return ""
}

func TestNodeClusterOn(t *testing.T) {
	for _, tc := range []struct {
		flag string
		cmd  string
		want bool
	}{
		{"auto", "node", true},
		{"auto", "/usr/bin/nodejs", true},
		{"auto", "python3", false},
		{"on", "python3", true},
		{"off", "node", false},
	} {
		c, err := parseArgs([]string{"--node-cluster", tc.flag, "--", tc.cmd, "app.js"})
		if err != nil {
			t.Fatal(err)
		}
		if got := nodeClusterOn(c, tc.cmd); got != tc.want {
			t.Errorf("--node-cluster %s, command %s: %v, want %v", tc.flag, tc.cmd, got, tc.want)
		}
	}
}
