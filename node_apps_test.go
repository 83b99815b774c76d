//go:build linux || darwin

// This file holds the Node tests of the other apps: UDP, HTTPS, and the
// seeds' worker files as written. The helpers are in node_test.go.
package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestNodeUDP(t *testing.T) {
	for _, mode := range []string{"shared", "rr"} {
		t.Run(mode, func(t *testing.T) {
			l, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			port := l.LocalAddr().(*net.UDPAddr).Port
			l.Close()
			in := startNode(t, "udp.js", []string{"APP_LISTEN=" + strconv.Itoa(port)}, "-n", "2", "--mode", mode)
			in.readyWorkers(2, 20*time.Second)
			c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for i := 0; i < 5; i++ {
				c.Write([]byte("ping"))
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				b := make([]byte, 100)
				n, err := c.Read(b)
				if err != nil || !strings.HasSuffix(string(b[:n]), " ping") {
					t.Fatalf("echo %d: %q, %v", i, b[:n], err)
				}
			}
			nodeStop(t, in)
		})
	}
}

func TestNodeHTTPS(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl is not installed: cannot make a certificate for the https app")
	}
	dir := t.TempDir()
	key, cert := filepath.Join(dir, "key.pem"), filepath.Join(dir, "cert.pem")
	out, err := exec.Command(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
		"-days", "1", "-subj", "/CN=localhost").CombinedOutput()
	if err != nil {
		t.Skipf("openssl cannot make a self-signed certificate: %v: %s", err, out)
	}
	for _, mode := range []string{"shared", "rr"} {
		t.Run(mode, func(t *testing.T) {
			port := freePort(t)
			in := startNode(t, "https.js", []string{"APP_LISTEN=" + strconv.Itoa(port), "TLS_KEY=" + key, "TLS_CERT=" + cert},
				"-n", "2", "--mode", mode)
			in.readyWorkers(2, 20*time.Second)
			c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
				TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
			pids := map[string]int{}
			for i := 0; i < 10; i++ {
				body, err := fetch(c, fmt.Sprintf("https://127.0.0.1:%d/", port))
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				pids[body]++
			}
			if len(pids) != 2 && mode == "rr" {
				t.Fatalf("rr spread %v: want both workers", pids)
			}
			nodeStop(t, in)
		})
	}
}

// The seeds' worker files, as written.
func TestNodeSeeds(t *testing.T) {
	nodeBinary(t)
	fixedPort := func(t *testing.T, port int) {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Skipf("the seed listens on port %d, which is in use here: %v", port, err)
		}
		l.Close()
	}
	check := func(t *testing.T, url, want string, n int) map[string]int {
		t.Helper()
		seen := map[string]int{}
		for i := 0; i < n; i++ {
			body, err := fetch(closeClient, url)
			if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			if !strings.Contains(body, want) {
				t.Fatalf("request %d: body %q, want %q in it", i, body, want)
			}
			seen[body]++
		}
		return seen
	}
	// Apps that listen() themselves on a fixed port.
	for _, tc := range []struct {
		file, want string
		port       int
	}{
		{"000_worker_8080.js", "hahahaha", 8080},
		{"001_cluster_worker.js", "handled by process.", 8080},
		{"002_cluster.js", "hello world", 8000},
	} {
		for _, mode := range []string{"shared", "rr"} {
			t.Run(tc.file+"/"+mode, func(t *testing.T) {
				fixedPort(t, tc.port)
				in := startNode(t, "seeds/"+tc.file, nil, "-n", "2", "--mode", mode)
				in.readyWorkers(2, 20*time.Second)
				seen := check(t, fmt.Sprintf("http://127.0.0.1:%d/", tc.port), tc.want, 10)
				if mode == "rr" && strings.Contains(tc.want, "process.") && len(seen) != 2 {
					t.Fatalf("rr spread %v: want both workers", seen)
				}
				nodeStop(t, in)
			})
		}
	}
	// Workers that take the server handle from process.on('message').
	for _, tc := range []struct{ file, want string }{
		{"002_child.js", "handled by child, pid is"},
		{"002_worker.js", "handled by child, pid is"},
		{"003_worker.js", "handled by worker n"},
	} {
		for _, mode := range []string{"shared", "rr"} {
			t.Run(tc.file+"/"+mode, func(t *testing.T) {
				port := freePort(t)
				// server.listen(handle) listens on the socket itself (Node passes
				// exclusive): no listening message, so up after --ready-delay.
				in := startNode(t, "seeds/"+tc.file, nil, "-n", "2", "--mode", mode, "-p", strconv.Itoa(port),
					"--node-send-server", "server", "--ready-delay", "1s")
				in.readyWorkers(2, 20*time.Second)
				check(t, fmt.Sprintf("http://127.0.0.1:%d/", port), tc.want, 10)
				nodeStop(t, in)
			})
		}
	}
}

// The seed worker that throws on every request and sends {act: 'suicide'}:
// prefork starts its replacement at once, and every request is answered.
func TestNodeSeedSuicide(t *testing.T) {
	for _, mode := range []string{"shared", "rr"} {
		t.Run(mode, func(t *testing.T) {
			port := freePort(t)
			in := startNode(t, "seeds/001_multi_process_worker.js", nil, "-n", "2", "--mode", mode,
				"-p", strconv.Itoa(port), "--node-send-server", "server", "--min-uptime", "0s", "--ready-delay", "1s")
			in.readyWorkers(2, 20*time.Second)
			url := fmt.Sprintf("http://127.0.0.1:%d/", port)
			for i := 0; i < 6; i++ {
				body, err := fetch(closeClient, url)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				if !strings.HasPrefix(body, "I am worker, pid:") {
					t.Fatalf("request %d: %q", i, body)
				}
				in.readyWorkers(2, 20*time.Second)
			}
			if out := in.stderr.String(); !strings.Contains(out, "worker is stopping on its own; starting its replacement") {
				t.Fatalf("no replacement started on {act: 'suicide'}:\n%s", out)
			}
			nodeStop(t, in)
		})
	}
}
