//go:build linux || darwin

// codec.go and conn.go implement prefork's end of a Node.js IPC channel, the
// codec of the Node cluster protocol (docs/node.md): newline-delimited JSON
// on a unix stream socket pair, a descriptor travelling in SCM_RIGHTS with the
// first bytes of its NODE_HANDLE line, NODE_HANDLE_ACK/NACK for every handle
// either side sends. One reader goroutine per worker parses lines and hands
// them to the protocol (cluster.go); writers share one ordered output.
//
// This file holds the codec: the messages, their JSON lines, handle
// matching and the line bound (MaxLine); the per-worker channel and its
// writer queue are in conn.go.

package nodecluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"
)

// msg is one message a worker sent: the fields of the cluster protocol that
// prefork reads; everything else in the line is ignored.
type msg struct {
	Cmd      string `json:"cmd"`
	Act      string `json:"act"`
	Seq      jsInt  `json:"seq"`
	Ack      jsInt  `json:"ack"`
	Accepted bool   `json:"accepted"`
	Key      string `json:"key"`

	// queryServer and listening
	Index       jsInt           `json:"index"`
	Address     *string         `json:"address"`
	Port        jsInt           `json:"port"`
	AddressType json.RawMessage `json:"addressType"` // 4, 6, -1, "udp4", "udp6" or null
	Fd          jsInt           `json:"fd"`
	Flags       jsInt           `json:"flags"`
	Backlog     jsInt           `json:"backlog"`
	Data        json.RawMessage `json:"data"`
	Exclusive   bool            `json:"exclusive"`
	ReadableAll bool            `json:"readableAll"` // unix socket chmod options
	WritableAll bool            `json:"writableAll"`

	// the NODE_HANDLE wrapper
	Type string          `json:"type"`
	Msg  json.RawMessage `json:"msg"`
}

// jsInt is a value the worker sends where the protocol has a number. Node
// fills these from the app's listen() arguments, so anything may come (null
// for listen({fd}), false for a backlog): raw is the JSON as sent ("" when
// absent), n the number when it is one.
type jsInt struct {
	raw string
	n   int
	num bool
}

func (j *jsInt) UnmarshalJSON(b []byte) error {
	j.raw = string(b)
	var f float64
	if json.Unmarshal(b, &f) == nil && f == float64(int(f)) {
		j.n, j.num = int(f), true
	}
	return nil
}

// js renders the value as JavaScript's template strings do: "undefined" when absent.
func (j jsInt) js() string {
	switch {
	case j.raw == "":
		return "undefined"
	case j.num:
		return strconv.Itoa(j.n)
	}
	var s string
	if json.Unmarshal([]byte(j.raw), &s) == nil {
		return s
	}
	return j.raw
}

// internal reports whether Node treats m as one of its own messages rather than
// a user message (child_process.js: a cmd longer than 5 that starts with NODE_).
func (m *msg) internal() bool { return len(m.Cmd) > 5 && m.Cmd[:5] == "NODE_" }

// The two lines a worker sends per rr connection; the first is compared as bytes.
var handleAckLine = []byte(`{"cmd":"NODE_HANDLE_ACK"}`)

// parseLine decodes one line. A line that is not a JSON object is a user
// message prefork has no use for (ok false); an object whose fields have other
// types than the protocol's is a user message too, of which only act is kept.
func parseLine(line []byte, m *msg) (ok bool) {
	*m = msg{}
	if bytes.Equal(line, handleAckLine) {
		m.Cmd = "NODE_HANDLE_ACK"
		return true
	}
	if len(line) == 0 || line[0] != '{' {
		return false
	}
	if parseAcceptedLine(line, m) {
		return true
	}
	if err := json.Unmarshal(line, m); err != nil {
		var u struct {
			Act json.RawMessage `json:"act"`
		}
		*m = msg{}
		if json.Unmarshal(line, &u) != nil {
			return false
		}
		json.Unmarshal(u.Act, &m.Act) // a non-string act stays ""
		return true
	}
	if !m.internal() && m.Cmd != "" {
		// A user object that happens to have cmd: keep it a user message.
		m.Cmd = ""
	}
	return true
}

// parseAcceptedLine reads, without encoding/json, the line a worker sends for
// every rr connection, exactly as Node writes it:
// {"cmd":"NODE_CLUSTER","ack":N,"accepted":true|false,"seq":M}.
func parseAcceptedLine(line []byte, m *msg) bool {
	const p1, p2, p3 = `{"cmd":"NODE_CLUSTER","ack":`, `,"accepted":`, `,"seq":`
	b, ok := bytes.CutPrefix(line, []byte(p1))
	if !ok {
		return false
	}
	ack, b, ok := cutDigits(b)
	if !ok {
		return false
	}
	if b, ok = bytes.CutPrefix(b, []byte(p2)); !ok {
		return false
	}
	var accepted bool
	if r, ok := bytes.CutPrefix(b, []byte("true")); ok {
		b, accepted = r, true
	} else if b, ok = bytes.CutPrefix(b, []byte("false")); !ok {
		return false
	}
	if b, ok = bytes.CutPrefix(b, []byte(p3)); !ok {
		return false
	}
	seq, b, ok := cutDigits(b)
	if !ok || string(b) != "}" {
		return false
	}
	m.Cmd, m.Accepted = "NODE_CLUSTER", accepted
	m.Ack = jsInt{raw: strconv.Itoa(ack), n: ack, num: true}
	m.Seq = jsInt{raw: strconv.Itoa(seq), n: seq, num: true}
	return true
}

// cutDigits reads a non-negative decimal integer of at most 15 digits.
func cutDigits(b []byte) (int, []byte, bool) {
	n, i := 0, 0
	for i < len(b) && i < 15 && b[i] >= '0' && b[i] <= '9' {
		n = n*10 + int(b[i]-'0')
		i++
	}
	return n, b[i:], i > 0 && (i == len(b) || b[i] < '0' || b[i] > '9')
}

// encodeLine encodes v as one line of the protocol.
func encodeLine(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("prefork: node message: %v", err)) // only prefork's own types get here
	}
	return append(b, '\n')
}

// MaxLine is the longest line prefork reads from a worker, 16 MiB: a worker
// that sends a longer one (or bytes without a newline for that long) is broken,
// its channel closed. Node itself sets no limit; the cluster protocol's lines
// are short, and prefork has no use for a user message's content.
const MaxLine = 16 << 20

// keepPartial is the most a line buffer keeps after a line: the room a
// bigger message took is given back.
const keepPartial = 64 << 10

// ErrLineTooLong is why the channel of a worker that sent a line longer than
// MaxLine was closed.
var ErrLineTooLong = errors.New("a line on the node channel is longer than 16 MiB")

// lines splits what was read into lines and handles the complete ones; an
// error when a line grows past MaxLine.
func (c *channel) lines(b []byte) error {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if len(c.partial)+len(b) > MaxLine {
				c.dropPartial()
				return ErrLineTooLong
			}
			c.partial = append(c.partial, b...)
			return nil
		}
		line := b[:i]
		if len(c.partial) > 0 {
			if len(c.partial)+len(line) > MaxLine {
				c.dropPartial()
				return ErrLineTooLong
			}
			c.partial = append(c.partial, line...)
			line = c.partial
		}
		c.line(line)
		if cap(c.partial) > keepPartial {
			c.dropPartial()
		} else {
			c.partial = c.partial[:0]
		}
		b = b[i+1:]
	}
	return nil
}

// dropPartial gives up a line buffer that a big message grew, and the
// memory with it: the Go runtime would keep it from the system for minutes.
// At most once a second, whichever worker sends big messages.
func (c *channel) dropPartial() {
	big := cap(c.partial) >= 1<<20
	c.partial = nil
	if now := time.Now().UnixNano(); big && now-lastFreed.Load() > int64(time.Second) {
		lastFreed.Store(now)
		debug.FreeOSMemory()
	}
}

// lastFreed is when dropPartial last gave memory back, in Unix nanoseconds.
var lastFreed atomic.Int64

// dropStrayFds closes the descriptors of a read that no NODE_HANDLE line
// took: a descriptor comes with the first byte of its line, so once the lines
// a read completed are handled, only a line still incomplete may own one.
// That one is kept (at most one: one descriptor per NODE_HANDLE line).
func (c *channel) dropStrayFds() {
	keep := 0
	if len(c.partial) > 0 {
		keep = 1
	}
	if len(c.fds) > keep {
		closeFds(c.fds[keep:])
		c.fds = c.fds[:keep]
	}
}
