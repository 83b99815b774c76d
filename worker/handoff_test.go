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
	n, oobn, _, _, err := recvmsg(ch, b, oob, 0)
	if err != nil || oobn != 0 || n == 0 || n%4 != 0 {
		t.Fatalf("ack message: %d bytes, %d of control, %v", n, oobn, err)
	}
	var seqs []uint32
	for i := 0; i < n; i += 4 {
		seqs = append(seqs, binary.BigEndian.Uint32(b[i:]))
	}
	return seqs
}

// recvmsg is syscall.Recvmsg again after EINTR: with SO_RCVTIMEO set the
// kernel does not restart it after a signal (the runtime's preemption, SIGCHLD).
func recvmsg(fd int, p, oob []byte, flags int) (n, oobn, recvflags int, from syscall.Sockaddr, err error) {
	for {
		n, oobn, recvflags, from, err = syscall.Recvmsg(fd, p, oob, flags)
		if err != syscall.EINTR {
			return
		}
	}
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
	if n, _, _, _, err := recvmsg(ch, make([]byte, 8), nil, 0); n != 0 || err != nil {
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
	if n, _, _, _, err := recvmsg(ch, make([]byte, 8), nil, 0); err == nil {
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
	if n, _, _, _, err := recvmsg(ch, make([]byte, 8), nil, 0); n != 0 || err != nil {
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
			if n, _, _, _, err := recvmsg(ch, make([]byte, 8), nil, 0); n != 0 || err != nil {
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
	n, _, _, _, err := recvmsg(ch, make([]byte, 64), nil, 0)
	if n != 0 || err != nil {
		t.Fatalf("got %d bytes (%v) after closing with queued connections, want end of file and no ack", n, err)
	}
}
