//go:build linux || darwin

// This file tests --balance with unmodified Node apps under prefork's cluster
// channel: least keeps off a worker whose event loop is blocked (app.js
// /block), and source makes an unmodified socket.io server work with its
// polling transport (npm socket.io and socket.io-client, installed by npm into
// a cache on first use; skipped with a message where the registry cannot be
// reached), where roundrobin and the kernel's hash break its sessions.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestBalanceNodeLeast(t *testing.T) {
	for _, policy := range []string{"least", "roundrobin"} {
		t.Run(policy, func(t *testing.T) {
			port := freePort(t)
			in := startNode(t, "app.js", []string{"APP_LISTEN=" + strconv.Itoa(port)}, "-n", "2", "--mode", "rr", "--balance", policy)
			in.readyWorkers(2, 20*time.Second)
			url := fmt.Sprintf("http://127.0.0.1:%d", port)
			get := func(path string) (int, error) {
				body, err := fetch(closeClient, url+path)
				if err != nil {
					return 0, err
				}
				return strconv.Atoi(strings.TrimSpace(body))
			}
			busyPID, byPID := busyLoad(t, get, "/block", 20)
			t.Logf("%s: the blocked worker answered %d of 20 fast requests (%v)", policy, byPID[busyPID], byPID)
			switch {
			case policy == "least" && byPID[busyPID] > leastBusyMax:
				t.Errorf("least: the blocked worker %d answered %d of 20 fast requests, want at most %d (%v)", busyPID, byPID[busyPID], leastBusyMax, byPID)
			case policy == "roundrobin" && byPID[busyPID] < 5:
				t.Errorf("roundrobin: the blocked worker %d answered %d of 20, want about half (%v)", busyPID, byPID[busyPID], byPID)
			}
		})
	}
}

// socketIOVersion is the socket.io (and socket.io-client) the test installs.
const socketIOVersion = "4.8.4"

// socketIOModules returns a node_modules holding socket.io and
// socket.io-client, installed by npm into the user's cache on first use.
func socketIOModules(t *testing.T) string {
	return npmModules(t, "socket.io-"+socketIOVersion, "socket.io@"+socketIOVersion, "socket.io-client@"+socketIOVersion)
}

// socketIOResult is what testdata/node/socketio_client.js prints.
type socketIOResult struct {
	Errors  int                 `json:"errors"`
	Answers map[string][]string `json:"answers"`
}

func TestBalanceSocketIO(t *testing.T) {
	node := nodeBinary(t)
	mods := socketIOModules(t)
	sources := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7"}
	for _, mode := range modes() {
		if mode == "shared" {
			continue
		}
		t.Run(mode, func(t *testing.T) {
			run := func(args ...string) socketIOResult {
				t.Helper()
				port := freePort(t)
				env := []string{"APP_LISTEN=" + strconv.Itoa(port), "NODE_PATH=" + mods}
				in := startNode(t, "socketio.js", env, append([]string{"-l", fmt.Sprintf("127.0.0.1:%d", port), "-n", "2", "--mode", mode}, args...)...)
				in.readyWorkers(2, 20*time.Second)
				c := exec.Command(node, append([]string{nodeApp(t, "socketio_client.js"), fmt.Sprintf("http://127.0.0.1:%d", port)}, sources...)...)
				c.Env = append(os.Environ(), "NODE_PATH="+mods)
				c.Stderr = os.Stderr
				out, err := c.Output()
				if err != nil {
					t.Fatalf("socket.io clients: %v\n%s", err, out)
				}
				var r socketIOResult
				if err := json.Unmarshal(out, &r); err != nil {
					t.Fatalf("socket.io clients printed %q: %v", out, err)
				}
				in.signal(syscall.SIGTERM)
				if code := in.wait(20 * time.Second); code != 0 {
					t.Errorf("prefork exited with status %d after SIGTERM", code)
				}
				t.Logf("%v: %d of %d clients had a session error", args, r.Errors, len(sources))
				return r
			}
			r := run("--balance", "source")
			if r.Errors != 0 {
				t.Errorf("source: %d of %d socket.io clients had a session error, want 0 (%v)", r.Errors, len(sources), r.Answers)
			}
			for _, src := range sources {
				slots := map[string]bool{}
				for _, a := range r.Answers[src] {
					slots[strings.Fields(a)[0]] = true
				}
				if want := strconv.Itoa(sourceSlot(src, 2)); len(r.Answers[src]) != 5 || len(slots) != 1 || !slots[want] {
					t.Errorf("source: client %s got %v, want 5 answers from slot %s", src, r.Answers[src], want)
				}
			}
			var other []string // rr: strict turns; reuseport: the kernel's hash
			if mode == "rr" {
				other = []string{"--balance", "roundrobin"}
			}
			if r := run(other...); r.Errors == 0 {
				t.Errorf("without source no socket.io client had a session error (%v): the test cannot tell", r.Answers)
			}
		})
	}
}
