//go:build unix

// This file tests Conn, what Accept makes of a handed connection, against
// real TCP and unix peers.
package worker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// handedTCP hands a real TCP connection to an in-process rr listener the way
// prefork would and accepts it: the client end, the accepted Conn, and the
// server side's local address as net sees it. The test's own copy is closed
// after the ack, as prefork's is.
func handedTCP(t *testing.T) (client, got net.Conn, local net.Addr) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ch, ls := inProcessRR(t, "web")
	t.Cleanup(func() { ls[0].Close() })
	c, s := clientPair(t, l)
	t.Cleanup(func() { c.Close() })
	sendConn(t, ch, 1, 0, s)
	local = s.LocalAddr()
	if got, err = ls[0].Accept(); err != nil {
		t.Fatal(err)
	}
	readAcks(t, ch)
	s.Close()
	return c, got, local
}

// TestRRConn checks the net.Conn that Accept makes of a handed connection
// against what a *net.TCPConn from Accept would say and do.
func TestRRConn(t *testing.T) {
	c, got, local := handedTCP(t)
	conn := got.(*Conn)
	if got.LocalAddr().String() != local.String() || got.LocalAddr().Network() != "tcp" {
		t.Fatalf("LocalAddr %v, want %v", got.LocalAddr(), local)
	}
	if got.RemoteAddr().String() != c.LocalAddr().String() {
		t.Fatalf("RemoteAddr %v, want the client's %v", got.RemoteAddr(), c.LocalAddr())
	}
	if _, ok := got.RemoteAddr().(*net.TCPAddr); !ok {
		t.Fatalf("RemoteAddr is a %T", got.RemoteAddr())
	}
	// what net's Accept sets: TCP_NODELAY and keep-alive
	rc, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var nodelay, keepalive int
	var flags uintptr
	rc.Control(func(fd uintptr) {
		nodelay, _ = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY)
		keepalive, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
		flags, _, _ = syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_GETFD, 0)
	})
	if nodelay == 0 || keepalive == 0 {
		t.Fatalf("TCP_NODELAY %d, SO_KEEPALIVE %d: want both on", nodelay, keepalive)
	}
	if flags&syscall.FD_CLOEXEC == 0 {
		t.Fatal("the connection is not close-on-exec")
	}
	if err := conn.SetKeepAlive(false); err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) {
		keepalive, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
	})
	if keepalive != 0 {
		t.Fatal("SetKeepAlive(false) left keep-alive on")
	}

	// a read deadline is a net.Error that says Timeout, as net's is
	got.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err = got.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v (%T)", err, err)
	}
	got.SetReadDeadline(time.Time{})

	// both directions, then CloseWrite: the client reads its data and EOF
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(got, b); err != nil || string(b) != "ping" {
		t.Fatalf("read %q, %v", b, err)
	}
	if _, err := got.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if all, err := io.ReadAll(c); err != nil || string(all) != "pong" {
		t.Fatalf("client read %q, %v; want pong then EOF", all, err)
	}
	// the client closes: the worker reads io.EOF itself, not wrapped
	c.Close()
	got.SetReadDeadline(time.Now().Add(20 * time.Second))
	if n, err := got.Read(b); n != 0 || err != io.EOF {
		t.Fatalf("read after the client closed: %d, %v", n, err)
	}
	if err := got.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := got.Read(b); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after Close: %v, want net.ErrClosed", err)
	}
	if err := got.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
}

// TestRRConnUnix checks a handed unix-socket connection: network "unix", the
// listener's path as its local address.
func TestRRConnUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch, ls := inProcessRR(t, "u")
	defer ls[0].Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	f, _ := s.(*net.UnixConn).File()
	s.Close()
	rc, _ := f.SyscallConn()
	msg := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 9), 0)
	rc.Control(func(fd uintptr) { err = syscall.Sendmsg(ch, msg, syscall.UnixRights(int(fd)), nil, 0) })
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ls[0].Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	if a, ok := got.LocalAddr().(*net.UnixAddr); !ok || a.Name != path || a.Network() != "unix" {
		t.Fatalf("LocalAddr %#v", got.LocalAddr())
	}
	c.Write([]byte("x"))
	got.SetReadDeadline(time.Now().Add(20 * time.Second))
	b := make([]byte, 1)
	if _, err := io.ReadFull(got, b); err != nil || b[0] != 'x' {
		t.Fatalf("read %q, %v", b, err)
	}
	if err := got.(*Conn).SetNoDelay(true); err == nil {
		t.Fatal("SetNoDelay on a unix socket succeeded")
	}
}

// TestRRConnReadFrom checks Conn.ReadFrom, which net/http uses to serve
// files: a file in two parts (a limited reader, then the rest from where the
// first stopped), then a reader that is not a file; the client gets every byte
// in order.
func TestRRConnReadFrom(t *testing.T) {
	c, got, _ := handedTCP(t)

	data := make([]byte, 3<<20) // more than a socket buffer: the send waits for room
	for i := range data {
		data[i] = byte(i * 7 / 5)
	}
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tail := []byte("and not a file\n")
	sent := make(chan error, 1)
	go func() {
		rf := got.(io.ReaderFrom)
		n, err := rf.ReadFrom(io.LimitReader(f, 1<<20))
		if err == nil && n != 1<<20 {
			err = fmt.Errorf("first part: %d bytes", n)
		}
		if err == nil {
			n, err = rf.ReadFrom(f)
			if err == nil && n != int64(len(data)-1<<20) {
				err = fmt.Errorf("rest: %d bytes", n)
			}
		}
		if err == nil {
			n, err = rf.ReadFrom(strings.NewReader(string(tail)))
			if err == nil && n != int64(len(tail)) {
				err = fmt.Errorf("tail: %d bytes", n)
			}
		}
		got.Close()
		sent <- err
	}()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	all, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte(nil), data...), tail...)
	if len(all) != len(want) {
		t.Fatalf("client got %d bytes, want %d", len(all), len(want))
	}
	for i := range all {
		if all[i] != want[i] {
			t.Fatalf("byte %d differs", i)
		}
	}
}
