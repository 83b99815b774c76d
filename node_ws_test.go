//go:build linux || darwin

// This file tests the goodbye of an app with long-lived connections: a ws
// (npm) server under prefork, whose clients never disconnect on their own,
// gets --stop-signal once disconnect has not ended it within nodeStopWait,
// so its own SIGTERM handler closes its clients with 1001, on a reload and on
// a stop alike.
package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// wsVersion is the ws the test installs.
const wsVersion = "8.18.3"

// npmModules returns a node_modules holding pkgs, installed by npm into the
// user's cache (prefork-test/NAME) on first use; the test is skipped when npm
// or the registry is missing.
func npmModules(t *testing.T, name string, pkgs ...string) string {
	t.Helper()
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Skipf("no npm: cannot install %s", strings.Join(pkgs, " "))
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "prefork-test", name)
	mods := filepath.Join(dir, "node_modules")
	installed := true
	for _, p := range pkgs {
		n := p[:strings.LastIndexByte(p, '@')]
		if _, err := os.Stat(filepath.Join(mods, n, "package.json")); err != nil {
			installed = false
		}
	}
	if installed {
		return mods
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(npm, append([]string{"install", "--prefix", dir, "--no-audit", "--no-fund", "--no-save",
		"--fetch-retries=0", "--fetch-timeout=15000"}, pkgs...)...)
	cmd.Dir = dir
	done := make(chan struct{})
	timer := time.AfterFunc(2*time.Minute, func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
		}
	})
	out, err := cmd.CombinedOutput()
	close(done)
	timer.Stop()
	if err != nil {
		t.Skipf("npm install %s failed (is the registry reachable?): %v\n%s", strings.Join(pkgs, " "), err, out)
	}
	return mods
}

// wsClient is one WebSocket client: the pid of the worker that greeted it,
// and, once the connection ends, the close code the server sent (1006 when
// it ended with no close frame).
type wsClient struct {
	pid  int
	code chan int
}

// dialWS opens a WebSocket to addr, reads the greeting, and watches for the end.
func dialWS(t *testing.T, addr string) *wsClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", addr)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("websocket handshake: %v %v", err, resp)
	}
	op, msg, err := readFrame(br)
	pid, _ := strconv.Atoi(string(msg))
	if err != nil || op != 1 || pid == 0 {
		t.Fatalf("websocket greeting: opcode %d %q %v", op, msg, err)
	}
	ws := &wsClient{pid: pid, code: make(chan int, 1)}
	c.SetReadDeadline(time.Time{})
	go func() {
		for {
			op, msg, err := readFrame(br)
			switch {
			case err != nil:
				ws.code <- 1006
				return
			case op == 8 && len(msg) >= 2:
				// Answer the close, as a client does, so the server sees it end.
				c.Write([]byte{0x88, 0x82, 0, 0, 0, 0, msg[0], msg[1]})
				ws.code <- int(binary.BigEndian.Uint16(msg))
				return
			}
		}
	}()
	return ws
}

// readFrame reads one unmasked frame from the server: its opcode and payload.
func readFrame(br *bufio.Reader) (byte, []byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > 1<<20 {
		return 0, nil, fmt.Errorf("frame of %d bytes", n)
	}
	p := make([]byte, n)
	_, err := io.ReadFull(br, p)
	return h[0] & 0x0f, p, err
}

// goodbyes waits for every client's close code and checks that it is 1001,
// within the bound: nodeStopWait, and then some for a loaded machine.
func goodbyes(t *testing.T, what string, clients []*wsClient, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for _, c := range clients {
		select {
		case code := <-c.code:
			if code != 1001 {
				t.Errorf("%s: the client of worker %d got close code %d, want 1001", what, c.pid, code)
			}
		case <-deadline:
			t.Fatalf("%s: the client of worker %d got no close within %v", what, c.pid, within)
		}
	}
}

func TestNodeWebSocketGoodbye(t *testing.T) {
	node := nodeBinary(t)
	mods := npmModules(t, "ws-"+wsVersion, "ws@"+wsVersion)
	for _, mode := range []string{"shared", "rr"} {
		t.Run(mode, func(t *testing.T) {
			port := freePort(t)
			addr := "127.0.0.1:" + strconv.Itoa(port)
			// --grace 6s: the stop signal goes 3 s after disconnect; SIGKILL, at
			// 6 s, would give every client 1006. Workers' output is prefixed,
			// which Node workers get as well.
			in := startPrefork(t, "", []string{"APP_LISTEN=" + strconv.Itoa(port), "NODE_PATH=" + mods},
				"--ready-delay", "60s", "-n", "2", "--mode", mode, "--grace", "6s", "--worker-output", "prefix",
				"--", node, nodeApp(t, "ws.js"))
			in.readyWorkers(2, 20*time.Second)
			dial := func() []*wsClient {
				var cs []*wsClient
				for i := 0; i < 6; i++ {
					cs = append(cs, dialWS(t, addr))
				}
				return cs
			}
			clients := dial()
			in.signal(syscall.SIGHUP)
			goodbyes(t, "reload", clients, 15*time.Second)
			in.waitFor("the new generation", 20*time.Second, readyWhere(2, func(w workerStatus) bool { return w.Generation == 2 }))
			// Each old worker that had clients said goodbye, its line prefixed
			// with its slot and pid (one with none may just leave: the kernel
			// gave every connection to the other, in shared mode).
			for _, c := range clients {
				line := fmt.Sprintf(`(?m)^\d+\.%d\| ws worker %d: closing \d+ clients with 1001$`, c.pid, c.pid)
				if !regexp.MustCompile(line).MatchString(in.stderr.String()) {
					t.Errorf("no prefixed goodbye line of old worker %d, which had clients, in the output", c.pid)
				}
			}
			clients = dial()
			start := time.Now()
			in.signal(syscall.SIGTERM)
			goodbyes(t, "stop", clients, 15*time.Second)
			if code := in.wait(15 * time.Second); code != 0 {
				t.Fatalf("prefork exited with %d after TERM, want 0", code)
			}
			if d := time.Since(start); d > 5500*time.Millisecond {
				t.Errorf("the stop took %v: the workers were killed at --grace, not stopped by their own handler", d)
			}
		})
	}
}
