//go:build unix

// This file tests the worker package with real sockets and a re-executed test
// binary playing the worker: shared mode from LISTEN_FDS, rr mode from a socket
// pair driven by hand, sd_notify against a socket bound here.
package worker

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
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

// sendConn hands conn to the worker end of ch by the rr protocol.
func sendConn(t *testing.T, ch int, seq, index uint32, conn net.Conn) {
	t.Helper()
	f, err := conn.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // prefork would keep its copy until the ack; the test does not need to
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	msg := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, seq), index)
	rc.Control(func(fd uintptr) {
		err = syscall.Sendmsg(ch, msg, syscall.UnixRights(int(fd)), nil, 0)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// readAcks reads one ack message from ch.
func readAcks(t *testing.T, ch int) []uint32 {
	t.Helper()
	tv := syscall.NsecToTimeval((20 * time.Second).Nanoseconds())
	syscall.SetsockoptTimeval(ch, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	b := make([]byte, 1024)
	oob := make([]byte, 64)
	n, oobn, _, _, err := syscall.Recvmsg(ch, b, oob, 0)
	if err != nil || oobn != 0 || n == 0 || n%4 != 0 {
		t.Fatalf("ack message: %d bytes, %d of control, %v", n, oobn, err)
	}
	var seqs []uint32
	for i := 0; i < n; i += 4 {
		seqs = append(seqs, binary.BigEndian.Uint32(b[i:]))
	}
	return seqs
}

// handoffPair returns the prefork end and the worker end of a handoff channel.
func handoffPair(t *testing.T) (prefork, worker int) {
	t.Helper()
	syscall.ForkLock.RLock()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, handoffType, 0)
	if err == nil {
		syscall.CloseOnExec(fds[0])
		syscall.CloseOnExec(fds[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fds[0]) })
	return fds[0], fds[1]
}

// clientPair returns both ends of a TCP connection over loopback: the client's
// and the accepted one, which the test hands to a worker.
func clientPair(t *testing.T, l net.Listener) (client, server net.Conn) {
	t.Helper()
	client, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}

func TestRRMode(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch, wfd := handoffPair(t)
	wf := os.NewFile(uintptr(wfd), "worker-end")

	// Three connections queued before the worker starts arrive in one batch:
	// one ack message of 12 bytes.
	var clients []net.Conn
	for i, index := range []uint32{0, 1, 0} {
		c, s := clientPair(t, l)
		sendConn(t, ch, uint32(10+i), index, s)
		s.Close()
		clients = append(clients, c)
	}
	ns := notifySocket(t, filepath.Join(t.TempDir(), "notify"))
	cmd := startChild(t, []*os.File{wf}, false, "PREFORK_MODE=rr", "LISTEN_FDNAMES=a:b",
		"PREFORK_WORKER=0", "PREFORK_GENERATION=1", "NOTIFY_SOCKET="+ns.LocalAddr().String())
	wf.Close()
	if got := readAcks(t, ch); fmt.Sprint(got) != "[10 11 12]" {
		t.Fatalf("acks %v, want [10 11 12] in one message", got)
	}
	readNotify(t, ns, "READY=1")
	for i, c := range clients {
		index := []int{0, 1, 0}[i]
		_, body := get(t, c, bufio.NewReader(c), "/")
		want := fmt.Sprintf("slot=0 gen=1 mode=rr listener=%d name=%s leftover=\"\"\n", index, []string{"a", "b"}[index])
		if body != want {
			t.Fatalf("connection %d answered %q, want %q", i, body, want)
		}
	}

	// One more while it runs, and it is acked alone.
	c, s := clientPair(t, l)
	sendConn(t, ch, 99, 1, s)
	s.Close()
	if got := readAcks(t, ch); fmt.Sprint(got) != "[99]" {
		t.Fatalf("acks %v, want [99]", got)
	}
	if _, body := get(t, c, bufio.NewReader(c), "/"); !strings.Contains(body, "listener=1 name=b") {
		t.Fatalf("answer %q", body)
	}

	// Shutdown closes every listener: the reader stops and closes fd 3.
	stopChild(t, cmd)
	if n, _, _, _, err := syscall.Recvmsg(ch, make([]byte, 8), nil, 0); n != 0 || err != nil {
		t.Fatalf("handoff channel after the worker stopped: %d bytes, %v, want end of file", n, err)
	}
}

// inProcessRR starts the rr reader in this process on a fresh socket pair.
func inProcessRR(t *testing.T, names ...string) (ch int, ls []net.Listener) {
	t.Helper()
	ch, wfd := handoffPair(t)
	ls, err := newHandoff(wfd, names)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, l := range ls {
			l.Close()
		}
	})
	return ch, ls
}

// acceptErr runs Accept and returns its error, failing if it takes too long.
func acceptErr(t *testing.T, l net.Listener) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if c != nil {
			c.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("Accept did not return")
	}
	return nil
}

func TestRRAcceptAndClose(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch, ls := inProcessRR(t, "x", "y")
	c, s := clientPair(t, l)
	sendConn(t, ch, 5, 1, s)
	s.Close()
	if got := readAcks(t, ch); fmt.Sprint(got) != "[5]" {
		t.Fatalf("acks %v", got)
	}
	got, err := ls[1].Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	if _, ok := got.(*net.TCPConn); !ok {
		t.Fatalf("Accept returned a %T", got)
	}
	c.Write([]byte("hi"))
	b := make([]byte, 2)
	got.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(got, b); err != nil || string(b) != "hi" {
		t.Fatalf("read %q, %v", b, err)
	}
	if ls[1].Addr().String() != "y" {
		t.Fatalf("Addr %v", ls[1].Addr())
	}

	// closing one listener leaves the channel open; closing both closes it
	ls[0].Close()
	if err := acceptErr(t, ls[0]); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on a closed listener: %v", err)
	}
	ls[1].Close()
	if err := acceptErr(t, ls[1]); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on a closed listener: %v", err)
	}
	tv := syscall.NsecToTimeval((20 * time.Second).Nanoseconds())
	syscall.SetsockoptTimeval(ch, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	if n, _, _, _, err := syscall.Recvmsg(ch, make([]byte, 8), nil, 0); n != 0 || err != nil {
		t.Fatalf("channel after every listener closed: %d bytes, %v, want end of file", n, err)
	}
}

func TestRRBadMessages(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cases := []struct {
		name string
		send func(t *testing.T, ch int)
		want string
	}{
		{"short", func(t *testing.T, ch int) { syscall.Sendmsg(ch, []byte{1, 2, 3}, nil, nil, 0) }, "bad handoff message"},
		{"no descriptor", func(t *testing.T, ch int) { syscall.Sendmsg(ch, make([]byte, 8), nil, nil, 0) }, "bad handoff message"},
		{"unknown listener", func(t *testing.T, ch int) {
			_, s := clientPair(t, l)
			sendConn(t, ch, 1, 7, s)
		}, "listener 7"},
		{"prefork gone", func(t *testing.T, ch int) { syscall.Close(ch) }, "closed the handoff channel"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fds, err := syscall.Socketpair(syscall.AF_UNIX, handoffType, 0)
			if err != nil {
				t.Fatal(err)
			}
			ch := fds[0]
			ls, err := newHandoff(fds[1], []string{"only"})
			if err != nil {
				t.Fatal(err)
			}
			defer ls[0].Close()
			tc.send(t, ch)
			err = acceptErr(t, ls[0])
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Accept: %v, want an error about %q", err, tc.want)
			}
			if tc.name == "prefork gone" {
				return
			}
			defer syscall.Close(ch)
			// nothing was acked, and the worker closed its end
			if n, _, _, _, err := syscall.Recvmsg(ch, make([]byte, 8), nil, 0); n != 0 || err != nil {
				t.Fatalf("channel after a bad message: %d bytes, %v, want end of file", n, err)
			}
		})
	}
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
