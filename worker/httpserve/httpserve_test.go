//go:build unix

// This file tests Serve in a re-executed child that inherits a listener at fd 3
// the way prefork (or systemd) passes it.
package httpserve

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

const childEnv = "HTTPSERVE_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				time.Sleep(500 * time.Millisecond)
			}
			io.WriteString(w, "done "+r.URL.Path)
		})}
		if err := Serve(srv, 5*time.Second); err != nil {
			os.Exit(3)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startChild runs the test binary as a worker with l at fd 3; LISTEN_PID is
// set by a shell that then execs in place, as prefork's shim does.
func startChild(t *testing.T, l *net.TCPListener) (*exec.Cmd, chan error) {
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0"`, os.Args[0])
	cmd.Env = append(os.Environ(), childEnv+"=1", "LISTEN_FDS=1", "GORACE=atexit_sleep_ms=0")
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	return cmd, done
}

func TestDrainAnswersInFlightRequestsWithClose(t *testing.T) {
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cmd, done := startChild(t, l)
	addr := l.Addr().String()
	l.Close() // the child holds the socket now

	// A keep-alive connection, idle at the stop, and a request in flight.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	br := bufio.NewReader(idle)
	io.WriteString(idle, "GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	if resp.Close {
		t.Fatal("answer before the stop already says Connection: close")
	}

	slow := make(chan *http.Response, 1)
	go func() {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			slow <- nil
			return
		}
		io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
		r, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			slow <- nil
			return
		}
		b, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(strings.NewReader(string(b)))
		slow <- r
	}()
	time.Sleep(200 * time.Millisecond) // the slow request is being handled
	cmd.Process.Signal(syscall.SIGTERM)
	r := <-slow
	if r == nil {
		t.Fatal("the request in flight at the stop got no answer")
	}
	b, _ := io.ReadAll(r.Body)
	if string(b) != "done /slow" || !r.Close {
		t.Errorf("in-flight answer %q (Connection: close %v), want the full body with Connection: close", b, r.Close)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("worker exited with %v, want 0", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("worker did not exit after draining")
	}
	// The idle keep-alive connection was closed by the drain.
	idle.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := br.ReadByte(); err == nil {
		t.Error("idle keep-alive connection still open after the worker exited")
	}
}
