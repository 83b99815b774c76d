//go:build linux || darwin

// Tests of the Node IPC codec: how lines are split and parsed.
package nodecluster

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestNodeLineParsing(t *testing.T) {
	var m msg
	for _, tc := range []struct {
		line     string
		ok       bool
		cmd, act string
	}{
		{`{"cmd":"NODE_HANDLE_ACK"}`, true, "NODE_HANDLE_ACK", ""},
		{`{"cmd":"NODE_CLUSTER","act":"online","seq":0}`, true, "NODE_CLUSTER", "online"},
		{`{"act":"suicide"}`, true, "", "suicide"},
		{`{"cmd":"mine","act":"suicide"}`, true, "", "suicide"}, // a user object with a cmd
		{`{"cmd":"NODE_","act":"x"}`, true, "", "x"},            // NODE_ alone is not internal
		{`"server"`, false, "", ""},
		{`42`, false, "", ""},
		{`{"seq":"not a number","act":"suicide"}`, true, "", "suicide"},
		{`{broken`, false, "", ""},
	} {
		ok := parseLine([]byte(tc.line), &m)
		if ok != tc.ok || ok && (m.Cmd != tc.cmd || m.Act != tc.act) {
			t.Errorf("%s: ok=%v cmd=%q act=%q, want ok=%v cmd=%q act=%q", tc.line, ok, m.Cmd, m.Act, tc.ok, tc.cmd, tc.act)
		}
	}
}

// The hand-written parser of the per-connection ack line agrees with encoding/json.
func TestNodeAcceptedLine(t *testing.T) {
	for _, line := range []string{
		`{"cmd":"NODE_CLUSTER","ack":2,"accepted":true,"seq":3}`,
		`{"cmd":"NODE_CLUSTER","ack":4294967295,"accepted":false,"seq":0}`,
		`{"cmd":"NODE_CLUSTER","ack":2,"accepted":true,"seq":3,"x":1}`,
		`{"cmd":"NODE_CLUSTER","ack":-2,"accepted":true,"seq":3}`,
		`{"cmd":"NODE_CLUSTER","ack":2,"accepted":truex,"seq":3}`,
		`{"cmd":"NODE_CLUSTER","ack":2.5,"accepted":true,"seq":3}`,
	} {
		var fast, slow msg
		ok := parseAcceptedLine([]byte(line), &fast)
		json.Unmarshal([]byte(line), &slow)
		if ok && (fast.Cmd != slow.Cmd || fast.Accepted != slow.Accepted || fast.Ack.n != slow.Ack.n || fast.Seq.n != slow.Seq.n) {
			t.Errorf("%s: fast %+v, encoding/json %+v", line, fast, slow)
		}
		if want := strings.Count(line, ",") == 3 && !strings.ContainsAny(line, "-.x"); ok != want {
			t.Errorf("%s: fast path taken %v, want %v", line, ok, want)
		}
	}
}

// Issue 18.3: a line may grow to MaxLine, not past it, and the buffer a big
// line grew is given up once that line is handled.
func TestNodeLineBound(t *testing.T) {
	c := &channel{}
	var got int
	c.handle = func(m *msg, fd int) { got++ }
	big := append([]byte(`{"act":"`), bytes.Repeat([]byte("x"), 10<<20)...)
	for i := 0; i < len(big); i += 64 << 10 {
		if err := c.lines(big[i:min(i+64<<10, len(big))]); err != nil {
			t.Fatalf("a 10 MiB line: %v", err)
		}
	}
	if err := c.lines([]byte("\"}\n{\"act\":\"suicide\"}\n")); err != nil || got != 2 {
		t.Fatalf("after a 10 MiB message: %v, %d lines handled", err, got)
	}
	if cap(c.partial) > keepPartial {
		t.Errorf("the line buffer keeps %d bytes after a 10 MiB message", cap(c.partial))
	}
	chunk := bytes.Repeat([]byte("y"), 1<<20)
	var err error
	for i := 0; i <= MaxLine>>20 && err == nil; i++ {
		err = c.lines(chunk)
	}
	if err != ErrLineTooLong || c.partial != nil {
		t.Errorf("a line past MaxLine: %v, buffer of %d bytes; want ErrLineTooLong and none", err, cap(c.partial))
	}
}

// Issue 18.4: descriptors attached to lines that are not NODE_HANDLE are
// closed once the read that brought them is handled; one that came with a
// NODE_HANDLE line is the handler's.
func TestNodeStrayDescriptors(t *testing.T) {
	master, child, err := NewPair()
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(child)
	c, err := newChannel(master, "test")
	if err != nil {
		t.Fatal(err)
	}
	handled := make(chan int, 16)
	c.handle = func(m *msg, fd int) {
		if fd >= 0 {
			handled <- fd
		}
	}
	ended := make(chan struct{})
	c.closed = func(error) { close(ended) }
	c.start()
	defer func() { c.close(); <-ended }()
	null, err := syscall.Open("/dev/null", syscall.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(null)
	before := len(listFds(t))
	for i := 0; i < 50; i++ {
		if err := syscall.Sendmsg(child, []byte(`{"hello":1}`+"\n"), syscall.UnixRights(null), nil, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Sendmsg(child, []byte(`{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"x"}}`+"\n"), syscall.UnixRights(null), nil, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case fd := <-handled:
		syscall.Close(fd)
	case <-time.After(5 * time.Second):
		t.Fatal("the NODE_HANDLE line's descriptor never reached the handler")
	}
	if after := len(listFds(t)); after > before {
		t.Errorf("%d descriptors open after 50 sent without NODE_HANDLE, %d before", after, before)
	}
}

func listFds(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("/dev/fd")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		t.Fatal(err)
	}
	return names
}
