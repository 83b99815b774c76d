//go:build unix

package rrwire

import (
	"encoding/binary"
	"os"
	"syscall"
	"testing"
)

// pair returns a handoff pair closed at the end of the test.
func pair(t *testing.T) (master, worker int) {
	t.Helper()
	m, w, err := NewPair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(m); syscall.Close(w) })
	return m, w
}

func TestSendRecvParse(t *testing.T) {
	m, w := pair(t)
	r, wp, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer wp.Close()
	if err := Send(m, 0xfffffffe, 3, int(r.Fd())); err != nil {
		t.Fatal(err)
	}
	p, oob := make([]byte, 16), make([]byte, OOBSpace)
	n, oobn, flags, err := Recv(w, p, oob, true)
	if err != nil {
		t.Fatal(err)
	}
	seq, index, fd, err := Parse(p[:n], oob[:oobn], flags)
	if err != nil || seq != 0xfffffffe || index != 3 {
		t.Fatalf("Parse: %d %d %d %v", seq, index, fd, err)
	}
	defer syscall.Close(fd)
	if v, err := fcntl(fd, syscall.F_GETFD); err != nil || v&syscall.FD_CLOEXEC == 0 {
		t.Fatalf("received descriptor not close-on-exec: %v %v", v, err)
	}
	wp.Write([]byte("x")) // the descriptor is the pipe's read end
	b := make([]byte, 1)
	if n, err := syscall.Read(fd, b); n != 1 || b[0] != 'x' {
		t.Fatalf("read through the received descriptor: %d %v", n, err)
	}
	if _, _, _, err := Recv(w, p, oob, true); err != syscall.EAGAIN {
		t.Fatalf("empty channel: %v, want EAGAIN", err)
	}
	// acks, several in one message
	var acks [8]byte
	PutAck(acks[:], 7)
	PutAck(acks[4:], 9)
	if err := SendAcks(w, acks[:]); err != nil {
		t.Fatal(err)
	}
	n, oobn, _, err = Recv(m, p, oob, false)
	if err != nil || oobn != 0 {
		t.Fatal(n, oobn, err)
	}
	if seqs, err := ParseAcks(p[:n], nil); err != nil || len(seqs) != 2 || seqs[0] != 7 || seqs[1] != 9 {
		t.Fatalf("acks: %v %v", seqs, err)
	}
	// the peer's close reads as an empty message
	syscall.Close(m)
	n, oobn, flags, err = Recv(w, p, oob, false)
	if _, _, _, err := Parse(p[:n], oob[:oobn], flags); err != ErrClosed {
		t.Fatalf("after close: %v, want ErrClosed", err)
	}
}

func TestParseRejects(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	dup := func() int {
		fd, err := syscall.Dup(int(r.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		return fd
	}
	msg := make([]byte, MsgLen)
	for _, c := range []struct {
		name string
		p    []byte
		fds  []int
	}{
		{"no descriptor", msg, nil},
		{"two descriptors", msg, []int{dup(), dup()}},
		{"short", msg[:7], []int{dup()}},
		{"long", append(msg, 0), []int{dup()}},
	} {
		var oob []byte
		if c.fds != nil {
			oob = syscall.UnixRights(c.fds...)
		}
		if _, _, _, err := Parse(c.p, oob, 0); err == nil || err == ErrClosed {
			t.Errorf("%s: accepted (%v)", c.name, err)
		}
		for _, fd := range c.fds {
			if _, err := fcntl(fd, syscall.F_GETFD); err != syscall.EBADF {
				t.Errorf("%s: descriptor %d left open", c.name, fd)
			}
		}
	}
}

func TestRightsSeveralMessages(t *testing.T) {
	oob := append(syscall.UnixRights(5, 6), syscall.UnixRights(7)...)
	got := Rights(oob, nil)
	if len(got) != 3 || got[0] != 5 || got[1] != 6 || got[2] != 7 {
		t.Fatalf("Rights: %v", got)
	}
	if got := Rights(oob[:3], nil); len(got) != 0 {
		t.Fatalf("Rights of a truncated header: %v", got)
	}
}

func TestNoAllocs(t *testing.T) {
	m, w := pair(t)
	p, oob := make([]byte, 16), make([]byte, OOBSpace)
	var fds [4]int
	n := testing.AllocsPerRun(50, func() {
		if err := Send(m, 1, 2, w); err != nil {
			t.Fatal(err)
		}
		n, oobn, flags, err := Recv(w, p, oob, true)
		if err != nil {
			t.Fatal(err)
		}
		if len(Rights(oob[:oobn], fds[:0])) != 1 {
			t.Fatal("no descriptor")
		}
		_, _, fd, err := Parse(p[:n], oob[:oobn], flags)
		if err != nil {
			t.Fatal(err)
		}
		syscall.Close(fd)
	})
	if n != 0 {
		t.Fatalf("a send and receive allocate %v times", n)
	}
}

func fcntl(fd, cmd int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), uintptr(cmd), 0)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

func FuzzAcks(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1})
	f.Add([]byte{0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0})
	f.Add([]byte{1, 2, 3})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		seqs, err := ParseAcks(b, nil)
		if len(b) == 0 || len(b)%4 != 0 {
			if err == nil {
				t.Fatalf("%d bytes accepted", len(b))
			}
			return
		}
		if err != nil || len(seqs) != len(b)/4 {
			t.Fatalf("%d bytes: %d acks, %v", len(b), len(seqs), err)
		}
		for i, s := range seqs {
			if s != binary.BigEndian.Uint32(b[4*i:]) {
				t.Fatalf("ack %d: %d", i, s)
			}
		}
	})
}

func FuzzRights(f *testing.F) {
	f.Add(syscall.UnixRights(1, 2))
	f.Add(append(syscall.UnixRights(3), 0, 0, 0))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, oob []byte) {
		Rights(oob, nil) // must not panic on any control message
	})
}

func TestBatch(t *testing.T) {
	m, w := pair(t)
	b := NewBatch(4, 64)
	if _, err := b.Recv(m); err != syscall.EAGAIN {
		t.Fatalf("empty: %v, want EAGAIN", err)
	}
	var ack [AckLen]byte
	for seq := uint32(1); seq <= 6; seq++ {
		PutAck(ack[:], seq)
		if err := SendAcks(w, ack[:]); err != nil {
			t.Fatal(err)
		}
	}
	var got []uint32
	for len(got) < 6 {
		n, err := b.Recv(m)
		if err != nil || n < 1 {
			t.Fatalf("Recv: %d %v", n, err)
		}
		for i := 0; i < n; i++ {
			p, oob, _ := b.Msg(i)
			if len(oob) != 0 {
				t.Fatalf("control message %v", oob)
			}
			got, err = ParseAcks(p, got)
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	for i, s := range got {
		if s != uint32(i+1) {
			t.Fatalf("acks %v", got)
		}
	}
	syscall.Close(w)
	n, err := b.Recv(m)
	if p, _, _ := b.Msg(0); err != nil || n < 1 || len(p) != 0 {
		t.Fatalf("after the peer's close: %d %v, want an empty message", n, err)
	}
}
