//go:build unix

// This file tests the worker package with real sockets and a re-executed test
// binary playing the worker: shared mode from LISTEN_FDS, rr mode from a socket
// pair driven by hand, sd_notify against a socket bound here.
package worker

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const childEnv = "WORKER_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	os.Exit(m.Run())
}

// childMain is the worker the tests start: an HTTP server on every listener
// that says who answered, a UDP echo on every packet socket, READY=1 once up,
// and on SIGTERM the drain of the package example.
func childMain() int {
	time.AfterFunc(60*time.Second, func() { os.Exit(4) }) // watchdog
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	ls, err := Listeners()
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 3
	}
	pcs, _ := PacketConns()
	leftover := os.Getenv("LISTEN_PID") + os.Getenv("LISTEN_FDS") + os.Getenv("LISTEN_FDNAMES")
	draining := make(chan struct{})
	var srvs []*http.Server
	for i, l := range ls {
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				Status("slow")
				<-draining
			}
			fmt.Fprintf(w, "slot=%d gen=%d mode=%s listener=%d name=%s leftover=%q\n",
				Slot(), Generation(), os.Getenv("PREFORK_MODE"), i, l.Addr(), leftover)
		})}
		srvs = append(srvs, srv)
		go srv.Serve(l)
	}
	for _, pc := range pcs {
		go func() {
			b := make([]byte, 512)
			for {
				n, from, err := pc.ReadFrom(b)
				if err != nil {
					return
				}
				pc.WriteTo(append([]byte("udp:"), b[:n]...), from)
			}
		}()
	}
	if err := Ready(); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 3
	}
	<-stop
	for _, srv := range srvs {
		srv.SetKeepAlivesEnabled(false)
	}
	close(draining)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, srv := range srvs {
		if err := srv.Shutdown(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			return 5
		}
	}
	return 0
}

// notifySocket binds a datagram socket for NOTIFY_SOCKET.
func notifySocket(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readNotify reads datagrams until one equals want.
func readNotify(t *testing.T, c *net.UnixConn, want string) {
	t.Helper()
	b := make([]byte, 4096)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		n, err := c.Read(b)
		if err != nil {
			t.Fatalf("waiting for %q on the notify socket: %v", want, err)
		}
		if string(b[:n]) == want {
			return
		}
	}
}

// startChild re-executes the test binary as a worker with files at fd 3, 4, ...
// With setListenPID it goes through sh, which sets LISTEN_PID to its own pid
// and execs: the way prefork's re-exec sets it.
func startChild(t *testing.T, files []*os.File, setListenPID bool, env ...string) *exec.Cmd {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	argv := []string{self, "-test.run=^$"}
	if setListenPID {
		argv = append([]string{"/bin/sh", "-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.ExtraFiles = files
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Env = append(cmd.Env, env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

// stopChild sends SIGTERM and expects a clean exit.
func stopChild(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("child after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("child did not exit after SIGTERM")
	}
}

// get sends one HTTP/1.1 request on c and returns the response and its body.
func get(t *testing.T, c net.Conn, r *bufio.Reader, path string) (*http.Response, string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: test\r\n\r\n", path); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

// getOnce dials network/addr, sends one request and returns the body.
func getOnce(t *testing.T, network, addr, path string) string {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, body := get(t, c, bufio.NewReader(c), path)
	return body
}

func TestSharedMode(t *testing.T) {
	dir := t.TempDir()
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	sock := filepath.Join(dir, "s")
	ul, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	var files []*os.File
	for _, x := range []interface{ File() (*os.File, error) }{tl.(*net.TCPListener), ul.(*net.UnixListener), pc.(*net.UDPConn)} {
		f, err := x.File()
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files = append(files, f)
	}
	ns := notifySocket(t, filepath.Join(dir, "notify"))
	cmd := startChild(t, files, true, "LISTEN_FDS=3", "LISTEN_FDNAMES=web:sock:dns",
		"PREFORK_MODE=shared", "PREFORK_WORKER=2", "PREFORK_GENERATION=7", "NOTIFY_SOCKET="+ns.LocalAddr().String())
	readNotify(t, ns, "READY=1")

	want := `slot=2 gen=7 mode=shared listener=0 name=127.0.0.1:%d leftover=""` + "\n"
	if got, want := getOnce(t, "tcp", tl.Addr().String(), "/"), fmt.Sprintf(want, tl.Addr().(*net.TCPAddr).Port); got != want {
		t.Fatalf("tcp listener answered %q, want %q", got, want)
	}
	if got := getOnce(t, "unix", sock, "/"); !strings.HasPrefix(got, "slot=2 gen=7 mode=shared listener=1 name="+sock+" ") {
		t.Fatalf("unix listener answered %q", got)
	}
	uc, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	uc.SetDeadline(time.Now().Add(20 * time.Second))
	uc.Write([]byte("ping"))
	b := make([]byte, 64)
	if n, err := uc.Read(b); err != nil || string(b[:n]) != "udp:ping" {
		t.Fatalf("udp echo: %q, %v", b[:n], err)
	}

	// Drain: a request in flight at SIGTERM is answered, with Connection: close.
	c, err := net.Dial("tcp", tl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if resp, _ := get(t, c, r, "/"); resp.Close {
		t.Fatal("keep-alive request answered with Connection: close before the drain")
	}
	type result struct {
		resp *http.Response
		body string
	}
	slow := make(chan result, 1)
	go func() {
		resp, body := get(t, c, r, "/slow")
		slow <- result{resp, body}
	}()
	readNotify(t, ns, "STATUS=slow")
	cmd.Process.Signal(syscall.SIGTERM)
	res := <-slow
	if !res.resp.Close || !strings.HasPrefix(res.body, "slot=2") { // Close: the answer said Connection: close
		t.Fatalf("request in flight at SIGTERM: close %v, body %q", res.resp.Close, res.body)
	}
	stopChild(t, cmd)
}

func TestFromEnvErrors(t *testing.T) {
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	cases := []struct {
		name string
		env  func(string) string
		want string
	}{
		{"nothing", env(), "not started by prefork"},
		{"other pid", env("LISTEN_FDS", "1", "LISTEN_PID", "1"), "LISTEN_PID"},
		{"no pid", env("LISTEN_FDS", "1"), "LISTEN_PID"},
		{"bad count", env("LISTEN_FDS", "x", "LISTEN_PID", "4242"), "bad LISTEN_FDS"},
		{"rr without names", env("PREFORK_MODE", "rr"), "LISTEN_FDNAMES"},
	}
	for _, tc := range cases {
		ls, pcs, err := fromEnv(tc.env, 4242)
		if err == nil || !strings.Contains(err.Error(), tc.want) || ls != nil || pcs != nil {
			t.Errorf("%s: %v, %v, %v; want an error about %q", tc.name, ls, pcs, err, tc.want)
		}
	}
	// fd 3 of this test process is not a handoff socket (or not open at all)
	if _, _, err := fromEnv(env("PREFORK_MODE", "rr", "LISTEN_FDNAMES", "a"), 4242); err == nil {
		t.Error("rr mode accepted fd 3 of the test process")
	}
}

func TestNotify(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Ready(); err != nil {
		t.Fatalf("Ready without NOTIFY_SOCKET: %v", err)
	}
	names := []string{filepath.Join(t.TempDir(), "notify")}
	if runtime.GOOS == "linux" {
		names = append(names, "@prefork-worker-test-"+strconv.Itoa(os.Getpid()))
	}
	for _, name := range names {
		ns := notifySocket(t, name)
		t.Setenv("NOTIFY_SOCKET", name)
		for _, send := range []func() error{Ready, Watchdog, Stopping, func() error { return Status("busy\nvery") }} {
			if err := send(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		for _, want := range []string{"READY=1", "WATCHDOG=1", "STOPPING=1", "STATUS=busy very"} {
			b := make([]byte, 64)
			ns.SetReadDeadline(time.Now().Add(20 * time.Second))
			n, err := ns.Read(b)
			if err != nil || string(b[:n]) != want {
				t.Fatalf("%s: got %q, %v, want %q", name, b[:n], err, want)
			}
		}
	}
	t.Setenv("NOTIFY_SOCKET", "relative")
	if err := Ready(); err == nil {
		t.Fatal("a relative NOTIFY_SOCKET was accepted")
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody"))
	if err := Ready(); err == nil {
		t.Fatal("no error when nobody listens on NOTIFY_SOCKET")
	}
}

func TestEnvHelpers(t *testing.T) {
	t.Setenv("PREFORK_WORKER", "")
	t.Setenv("PREFORK_GENERATION", "")
	t.Setenv("WATCHDOG_USEC", "")
	if Slot() != -1 || Generation() != 0 || WatchdogInterval() != 0 {
		t.Fatalf("unset: slot %d, generation %d, watchdog %v", Slot(), Generation(), WatchdogInterval())
	}
	t.Setenv("PREFORK_WORKER", "3")
	t.Setenv("PREFORK_GENERATION", "12")
	t.Setenv("WATCHDOG_USEC", "1500000")
	if Slot() != 3 || Generation() != 12 || WatchdogInterval() != 1500*time.Millisecond {
		t.Fatalf("set: slot %d, generation %d, watchdog %v", Slot(), Generation(), WatchdogInterval())
	}
}
