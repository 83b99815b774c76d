//go:build linux || darwin

package ctl

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// open serves a control socket whose handler echoes the request upper-cased
// and keeps the connection for "STAY".
func open(t *testing.T) (*Server, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ctl.sock")
	s, err := Open(Config{Path: path, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Handle: func(line []byte, _ syscall.Conn, quit <-chan struct{}) ([]byte, bool) {
			return []byte(strings.ToUpper(string(line))), string(line) == "stay"
		},
		Refuse: func(msg string) []byte { return []byte("refused: " + msg) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, path
}

func dial(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c.(*net.UnixConn)
}

func answer(t *testing.T, c net.Conn) string {
	t.Helper()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("no answer line: %v (got %q)", err, line)
	}
	return strings.TrimSuffix(line, "\n")
}

func TestAnswersALine(t *testing.T) {
	_, path := open(t)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket file mode: %v %v, want 0600", fi.Mode(), err)
	}
	c := dial(t, path)
	c.Write([]byte("status\n"))
	if got := answer(t, c); got != "STATUS" {
		t.Fatalf("answer %q, want STATUS", got)
	}
	// One request, one answer: the server closes after it.
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the answer: %d bytes, %v; want EOF", n, err)
	}
}

// A half-close ends the request (nc -N), with or without its newline.
func TestHalfCloseEndsTheRequest(t *testing.T) {
	_, path := open(t)
	for _, req := range []string{"reload\n", "reload"} {
		c := dial(t, path)
		c.Write([]byte(req))
		c.CloseWrite()
		if got := answer(t, c); got != "RELOAD" {
			t.Fatalf("request %q half-closed: answer %q, want RELOAD", req, got)
		}
	}
}

func TestRefusesALongRequest(t *testing.T) {
	_, path := open(t)
	c := dial(t, path)
	go c.Write([]byte(strings.Repeat("x", MaxRequest+10)))
	if got := answer(t, c); !strings.HasPrefix(got, "refused: request too long") {
		t.Fatalf("answer %q, want a refusal", got)
	}
}

// A handler that says stay keeps the connection open until Close.
func TestStayUntilClose(t *testing.T) {
	s, path := open(t)
	c := dial(t, path)
	c.Write([]byte("stay\n"))
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || line != "STAY\n" {
		t.Fatalf("answer %q %v", line, err)
	}
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := r.ReadByte(); err == nil || !os.IsTimeout(err) {
		t.Fatalf("the connection ended before Close: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	s.Close()
	if _, err := r.ReadByte(); err != io.EOF {
		t.Fatalf("after Close: %v, want EOF", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("socket file left after Close: %v", err)
	}
}

// A stale socket file is replaced; a live one is an error.
func TestStaleAndLiveSocket(t *testing.T) {
	_, path := open(t)
	if _, err := Open(Config{Path: path, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}); err == nil {
		t.Fatal("a second server on a live socket opened")
	}
}
