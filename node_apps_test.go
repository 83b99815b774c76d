//go:build linux || darwin

// This file holds the Node tests of the other apps: UDP, HTTPS, the seeds'
// worker files as written, and apps that listen on another address or family
// than prefork's listeners. The helpers are in node_test.go.
package main

import (
	"crypto/tls"
	"fmt"
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

// haveIPv6 reports whether this machine can bind IPv6 loopback.
func haveIPv6() bool {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// freeBothPort is a port free for TCP and for UDP, IPv4 and IPv6.
func freeBothPort(t *testing.T) int {
	t.Helper()
	for range 20 {
		port := freePort(t)
		if c, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
			c.Close()
			return port
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return 0
}

// listenApp is a node app that listens as APP_KIND (tcp, udp4, udp6) on
// APP_PORT and APP_HOST (none when empty): an HTTP server, or a UDP echo
// server that logs a failed send.
const listenApp = `'use strict';
const kind = process.env.APP_KIND, port = +process.env.APP_PORT, host = process.env.APP_HOST || undefined;
if (kind === 'tcp') {
  require('http').createServer((q, s) => s.end(String(process.pid))).listen(port, host);
} else {
  const s = require('dgram').createSocket(kind);
  s.on('message', (m, r) => s.send(process.pid + ' ' + m, r.port, r.address, (e) => e && console.error('app: send', e.code)));
  s.on('error', (e) => { console.error('app: bind', e.code); process.exit(1); });
  s.bind(port, host);
}
`

// startListenApp runs prefork with args over node and listenApp.
func startListenApp(t *testing.T, kind, host string, port int, args ...string) *instance {
	t.Helper()
	app := filepath.Join(t.TempDir(), "listen.js")
	if err := os.WriteFile(app, []byte(listenApp), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"APP_KIND=" + kind, "APP_HOST=" + host, "APP_PORT=" + strconv.Itoa(port)}
	args = append(append([]string{"--ready-delay", "60s"}, args...), "--", nodeBinary(t), app)
	return startPrefork(t, "", env, args...)
}

// serves checks that an HTTP request to addr gets a worker's answer.
func serves(t *testing.T, addr string) {
	t.Helper()
	if _, err := fetch(closeClient, "http://"+addr+"/"); err != nil {
		t.Fatalf("request to %s: %v", addr, err)
	}
}

// echoes checks that a datagram to addr comes back from a worker.
func echoes(t *testing.T, addr string) {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := make([]byte, 100)
	for i := 0; i < 5; i++ { // UDP: a datagram may be lost
		c.Write([]byte("ping"))
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if n, err := c.Read(b); err == nil && strings.HasSuffix(string(b[:n]), " ping") {
			return
		}
	}
	t.Fatalf("no echo from %s", addr)
}

// Issue 1: listen(P, '::') and a udp6 bind(P) are dual-stack, as under Node's
// primary, when prefork binds them on request.
func TestNodeListenIPv6WildcardIsDualStack(t *testing.T) {
	nodeBinary(t)
	if !haveIPv6() {
		t.Skip("no IPv6 on this machine")
	}
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			port := freePort(t)
			in := startListenApp(t, "tcp", "::", port, "-n", "2", "--mode", mode)
			in.readyWorkers(2, 20*time.Second)
			serves(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			serves(t, net.JoinHostPort("::1", strconv.Itoa(port)))
			nodeStop(t, in)
		})
	}
	t.Run("udp6", func(t *testing.T) {
		port := freeBothPort(t)
		in := startListenApp(t, "udp6", "", port, "-n", "2")
		in.readyWorkers(2, 20*time.Second)
		echoes(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		echoes(t, net.JoinHostPort("::1", strconv.Itoa(port)))
		nodeStop(t, in)
	})
}

// Issue 2a: dgram's bind(P) sends 0.0.0.0 even with no host; it takes
// prefork's -l udp:127.0.0.1:P instead of failing with EADDRINUSE.
func TestNodeUDPDefaultHostTakesOwnListener(t *testing.T) {
	nodeBinary(t)
	port := freeBothPort(t)
	in := startListenApp(t, "udp4", "", port, "-n", "2", "-l", "udp:127.0.0.1:"+strconv.Itoa(port))
	in.readyWorkers(2, 20*time.Second)
	echoes(t, "127.0.0.1:"+strconv.Itoa(port))
	nodeStop(t, in)
	if out := in.stderr.String(); strings.Count(out, "served by prefork's listener") != 1 {
		t.Fatalf("want one info line on the listener that served 0.0.0.0:\n%s", out)
	}
}

// Issue 2b: a udp4 socket gets prefork's IPv4 socket, never its IPv6 one
// (every send() would fail with EINVAL); a udp6 socket takes a dual-stack one.
func TestNodeUDPSocketFamily(t *testing.T) {
	nodeBinary(t)
	if !haveIPv6() {
		t.Skip("no IPv6 on this machine")
	}
	t.Run("udp4 skips IPv6", func(t *testing.T) {
		p := freeBothPort(t)
		port := strconv.Itoa(p)
		in := startListenApp(t, "udp4", "", p, "-n", "2", "-l", "udp:[::]:"+port, "-l", "udp:127.0.0.1:"+port)
		in.readyWorkers(2, 20*time.Second)
		echoes(t, "127.0.0.1:"+port)
		nodeStop(t, in)
	})
	t.Run("udp6 takes dual-stack", func(t *testing.T) {
		p := freeBothPort(t)
		port := strconv.Itoa(p)
		in := startListenApp(t, "udp6", "", p, "-n", "2", "-l", "udp::"+port)
		in.readyWorkers(2, 20*time.Second)
		echoes(t, "127.0.0.1:"+port)
		echoes(t, "[::1]:"+port)
		nodeStop(t, in)
	})
	t.Run("udp4 on an IPv6 socket fails", func(t *testing.T) {
		p := freeBothPort(t)
		port := strconv.Itoa(p)
		in := startListenApp(t, "udp4", "", p, "-n", "1", "-l", "udp::"+port)
		in.waitLog("app: bind EADDRINUSE", 20*time.Second)
		in.waitLog("which a udp4 socket cannot use", time.Second)
		in.signal(syscall.SIGTERM)
		in.wait(15 * time.Second) // a crash loop: its status is not the point
		if out := in.stderr.String(); strings.Contains(out, "app: send") {
			t.Fatalf("a worker was given the IPv6 socket:\n%s", out)
		}
	})
}

// Issue 2c: listen(P, '0.0.0.0') or listen(P, '::') takes prefork's
// -l 127.0.0.1:P (the operator's address) instead of binding beside it.
func TestNodeWildcardHostTakesOwnListener(t *testing.T) {
	nodeBinary(t)
	for _, mode := range []string{"shared", "rr"} {
		for _, host := range []string{"0.0.0.0", "::"} {
			t.Run(mode+"/"+host, func(t *testing.T) {
				p := freePort(t)
				port := strconv.Itoa(p)
				in := startListenApp(t, "tcp", host, p, "-n", "2", "--mode", mode, "-l", "127.0.0.1:"+port)
				in.readyWorkers(2, 20*time.Second)
				for range 4 {
					serves(t, "127.0.0.1:"+port)
				}
				nodeStop(t, in)
				out := in.stderr.String()
				if strings.Count(out, "served by prefork's listener") != 1 || strings.Contains(out, "bound for a node worker") {
					t.Fatalf("want one info line on the listener that served %s, and nothing bound:\n%s", host, out)
				}
			})
		}
	}
}

// A TCP server asking for 0.0.0.0 takes prefork's dual-stack -p listener: a
// Node server handles connections of either family.
func TestNodeIPv4WildcardOnDualStackListener(t *testing.T) {
	nodeBinary(t)
	if !haveIPv6() {
		t.Skip("no IPv6 on this machine")
	}
	for _, mode := range []string{"shared", "rr"} {
		t.Run(mode, func(t *testing.T) {
			p := freePort(t)
			port := strconv.Itoa(p)
			in := startListenApp(t, "tcp", "0.0.0.0", p, "-n", "2", "--mode", mode, "-p", port)
			in.readyWorkers(2, 20*time.Second)
			serves(t, "127.0.0.1:"+port)
			serves(t, "[::1]:"+port)
			nodeStop(t, in)
		})
	}
}

// A Node app with no -p: prefork binds what it listen()s on, and the status,
// the status file and the metrics show that listener and its queue as they
// show prefork's own.
func TestNodeBoundListenerInStatus(t *testing.T) {
	nodeBinary(t)
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			port := freePort(t)
			sock := ctlSock(t)
			in := startNode(t, "app.js", []string{"APP_LISTEN=" + strconv.Itoa(port)}, "-n", "2", "--mode", mode, "--control", sock)
			st := in.readyWorkers(2, 20*time.Second)
			want := ":" + strconv.Itoa(port)
			if len(st.Listeners) != 1 || !strings.HasSuffix(st.Listeners[0], want) {
				t.Errorf("status file listeners %v, want the one bound for the app (%s)", st.Listeners, want)
			}
			if txt := mustCtl(t, sock, "status"); !strings.Contains(txt, want) {
				t.Errorf("status shows no listener on %s:\n%s", want, txt)
			}
			m := mustCtl(t, sock, "metrics")
			if !regexp.MustCompile(`(?m)^prefork_listen_queue_length\{listener="[^"]*",addr="[^"]*` + want + `"\} \d+$`).MatchString(m) {
				t.Errorf("no listen queue metric for %s:\n%s", want, m)
			}
			nodeStop(t, in)
		})
	}
}
