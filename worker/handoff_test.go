//go:build unix

// This file tests the rr side of the package: real socket pairs driven by the
// test as prefork would, in this process and in a re-executed child.
package worker

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prefork/prefork/internal/rrwire"
)

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
	fds, err := syscall.Socketpair(syscall.AF_UNIX, rrwire.SocketType, 0)
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

	// Three connections queued before the worker starts: each is acked as the
	// worker accepts it.
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
	var acked []uint32
	for len(acked) < 3 {
		acked = append(acked, readAcks(t, ch)...)
	}
	sort.Slice(acked, func(i, j int) bool { return acked[i] < acked[j] })
	if fmt.Sprint(acked) != "[10 11 12]" {
		t.Fatalf("acks %v, want [10 11 12]", acked)
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
	// Nothing is acked before Accept takes the connection.
	var tv syscall.Timeval
	tv.Usec = 200000
	syscall.SetsockoptTimeval(ch, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	if n, _, _, _, err := syscall.Recvmsg(ch, make([]byte, 8), nil, 0); err == nil {
		t.Fatalf("an ack of %d bytes arrived before Accept", n)
	}
	got, err := ls[1].Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	if acks := readAcks(t, ch); fmt.Sprint(acks) != "[5]" {
		t.Fatalf("acks %v", acks)
	}
	if _, ok := got.(*Conn); !ok {
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
	tv = syscall.NsecToTimeval((20 * time.Second).Nanoseconds())
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
			fds, err := syscall.Socketpair(syscall.AF_UNIX, rrwire.SocketType, 0)
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

// Connections queued but never accepted are never acked: when the listeners
// close, the channel closes with them unacked, so prefork gives them to
// another worker instead of losing them.
func TestRRCloseLeavesQueuedConnectionsToPrefork(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch, ls := inProcessRR(t, "only")
	for seq := uint32(1); seq <= 3; seq++ {
		_, s := clientPair(t, l)
		sendConn(t, ch, seq, 0, s)
		s.Close()
	}
	time.Sleep(100 * time.Millisecond) // let the reader queue them
	ls[0].Close()
	tv := syscall.NsecToTimeval((20 * time.Second).Nanoseconds())
	syscall.SetsockoptTimeval(ch, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	n, _, _, _, err := syscall.Recvmsg(ch, make([]byte, 64), nil, 0)
	if n != 0 || err != nil {
		t.Fatalf("got %d bytes (%v) after closing with queued connections, want end of file and no ack", n, err)
	}
}

// TestRRConn checks the net.Conn that Accept makes of a handed connection
// against what a *net.TCPConn from Accept would say and do.
func TestRRConn(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch, ls := inProcessRR(t, "web")
	defer ls[0].Close()
	c, s := clientPair(t, l)
	defer c.Close()
	sendConn(t, ch, 1, 0, s)
	want := s.(*net.TCPConn)
	got, err := ls[0].Accept()
	if err != nil {
		t.Fatal(err)
	}
	readAcks(t, ch)
	s.Close() // the test's copy, as prefork's after the ack
	conn := got.(*Conn)
	if got.LocalAddr().String() != want.LocalAddr().String() || got.LocalAddr().Network() != "tcp" {
		t.Fatalf("LocalAddr %v, want %v", got.LocalAddr(), want.LocalAddr())
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
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch, ls := inProcessRR(t, "web")
	defer ls[0].Close()
	c, s := clientPair(t, l)
	defer c.Close()
	sendConn(t, ch, 1, 0, s)
	got, err := ls[0].Accept()
	if err != nil {
		t.Fatal(err)
	}
	readAcks(t, ch)
	s.Close()

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
