//go:build linux || darwin

// This file tests --worker-output (internal/output) end to end: every line of
// two chatty workers arrives whole, on its stream, with its worker's pid, in
// prefix and json mode; a stdout nobody reads for seconds loses lines, not
// requests.
package main

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const chatterLines = 2000

// chatterLine is line i of a chatter worker's stream: 1 B to 8 KiB, its
// content a function of stream and i alone, so that a line holding bytes of
// another is seen; every tenth long enough is a JSON object.
func chatterLine(stream string, i int) string {
	n := 1 + i*7919%8192
	if i%10 == 0 && n >= 64 {
		head := fmt.Sprintf(`{"s":%q,"seq":%d,"pad":"`, stream, i)
		return head + strings.Repeat("j", n-len(head)-2) + `"}`
	}
	c := "abcdefghijklmnopqrstuvwxyz"[i%26 : i%26+1]
	if stream == "stderr" {
		c = strings.ToUpper(c)
	}
	return strings.Repeat(c, n)
}

func init() {
	// A worker that writes chatterLines lines to stdout and to stderr at once
	// (TESTWORKER_CHATTER=forever: 1 KiB lines to stdout until it stops), and
	// serves HTTP meanwhile.
	extraRoles["chatter"] = func() int {
		if os.Getenv("TESTWORKER_CHATTER") == "forever" {
			go func() {
				line := []byte(strings.Repeat("x", 1023) + "\n")
				for {
					os.Stdout.Write(line)
					time.Sleep(200 * time.Microsecond)
				}
			}()
		} else {
			for _, f := range []*os.File{os.Stdout, os.Stderr} {
				go func() {
					for i := 0; i < chatterLines; i++ {
						f.WriteString(chatterLine(f.Name()[len("/dev/"):], i) + "\n")
					}
				}()
			}
		}
		return testWorker("http")
	}
}

// startOutput starts prefork with its stdout going to out (nil: to a
// checker, the first returned) and its stderr to the second checker
// returned, which passes the lines that are not a worker's on to the
// instance's own buffer (a failing test shows it).
func startOutput(t *testing.T, out *os.File, mode string, env []string, args ...string) (*instance, *lineCheck, *lineCheck) {
	return startOutputOf(t, os.Args[0], out, mode, env, args...)
}

// startOutputOf is startOutput with the worker binary bin.
func startOutputOf(t *testing.T, bin string, out *os.File, mode string, env []string, args ...string) (*instance, *lineCheck, *lineCheck) {
	t.Helper()
	in := newInstance(t)
	full := append([]string{"--status-file", in.status, "--ready", "notify", "-l", "127.0.0.1:0", "--worker-output", mode}, args...)
	in.cmd = exec.Command(os.Args[0], append(full, "--", bin)...)
	in.cmd.Env = preforkEnv("chatter", env...)
	stderr := &lineCheck{mode: mode, stream: "stderr", own: in.stderr, next: map[[2]int]int{}}
	in.cmd.Stderr = stderr
	var stdout *lineCheck
	if out != nil {
		in.cmd.Stdout = out
	} else {
		stdout = &lineCheck{mode: mode, stream: "stdout", own: in.stderr, next: map[[2]int]int{}}
		in.cmd.Stdout = stdout
	}
	in.watch()
	return in, stdout, stderr
}

// lineCheck checks, as they arrive, the lines prefork relays on one of its
// streams for chatter workers: each is its worker's next chatterLine, whole,
// labelled with the worker's slot and pid, and in json mode with its stream
// and a time, the JSON ones as objects. Lines that are not a worker's go on
// to own. It keeps nothing else, so that it reads fast enough for prefork
// on a busy machine.
type lineCheck struct {
	mode, stream string
	own          *syncBuffer
	part         []byte
	mu           sync.Mutex
	next         map[[2]int]int // by slot and pid: the next line expected
	err          error
	lines        atomic.Int64 // the workers' lines seen
}

var (
	prefixHead = regexp.MustCompile(`^(\d+)\.(\d+)\| `)
	jsonHead   = regexp.MustCompile(`^\{"time":"([^"]+)","slot":(\d+),"pid":(\d+),"generation":1,"stream":"(\w+)","line":`)
)

func (c *lineCheck) Write(p []byte) (int, error) {
	c.part = append(c.part, p...)
	for {
		i := bytes.IndexByte(c.part, '\n')
		if i < 0 {
			break
		}
		c.line(c.part[:i])
		c.part = c.part[i+1:]
	}
	if len(c.part) == 0 {
		c.part = nil
	}
	return len(p), nil
}

func (c *lineCheck) line(l []byte) {
	re := prefixHead
	if c.mode == "json" {
		re = jsonHead
	}
	m := re.FindSubmatchIndex(l[:min(len(l), 160)])
	if m == nil {
		if c.stream == "stderr" && bytes.HasPrefix(l, []byte("prefork: ")) || bytes.Contains(l, []byte("DATA RACE")) {
			c.own.Write(append(l[:len(l):len(l)], '\n'))
			return
		}
		c.fail(fmt.Errorf("%s: a line that is not a whole worker line: %.120q", c.stream, l))
		return
	}
	num := func(k int) int { n, _ := strconv.Atoi(string(l[m[2*k]:m[2*k+1]])); return n }
	key, payload := [2]int{num(1), num(2)}, l[m[1]:]
	if c.mode == "json" {
		key = [2]int{num(2), num(3)}
		if _, err := time.Parse(time.RFC3339Nano, string(l[m[2]:m[3]])); err != nil || string(l[m[8]:m[9]]) != c.stream || !bytes.HasSuffix(l, []byte("}")) {
			c.fail(fmt.Errorf("%s: time, stream or end wrong in %.200q", c.stream, l))
			return
		}
		payload = payload[:len(payload)-1]
	}
	c.mu.Lock()
	i := c.next[key]
	c.next[key]++
	c.mu.Unlock()
	want := chatterLine(c.stream, i)
	if c.mode == "json" && want[0] != '{' {
		want = `"` + want + `"` // a string of letters: nothing to escape
	}
	if i >= chatterLines || string(payload) != want {
		c.fail(fmt.Errorf("%s: slot and pid %v, line %d is %d bytes %.40q…, want %d bytes %.40q…", c.stream, key, i, len(payload), payload, len(want), want))
		return
	}
	c.lines.Add(1)
}

func (c *lineCheck) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = err
	}
}

// result is the first error seen, and the lines seen by slot and pid.
func (c *lineCheck) result() (map[[2]int]int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.next), c.err
}

// TestWorkerOutputLines: two workers write 2,000 lines of 1 B to 8 KiB each to
// stdout and to stderr at once; every line arrives whole, in order, on its
// stream, with its worker's slot and pid, and in json mode the JSON ones as
// objects; none is dropped. (user_test.go runs it with --user.)
func TestWorkerOutputLines(t *testing.T) {
	for _, mode := range []string{"prefix", "json"} {
		t.Run(mode, func(t *testing.T) { checkChatter(t, os.Args[0], mode) })
	}
}

// checkChatter runs two chatter workers (binary bin) with --worker-output
// mode and more args, and checks every line they write.
func checkChatter(t *testing.T, bin, mode string, args ...string) {
	in, stdout, stderr := startOutputOf(t, bin, nil, mode, nil, append([]string{"-n", "2"}, args...)...)
	st := in.readyWorkers(2, 20*time.Second)
	deadline := time.Now().Add(90 * time.Second)
	for stdout.lines.Load() < 2*chatterLines || stderr.lines.Load() < 2*chatterLines {
		for _, c := range []*lineCheck{stdout, stderr} {
			if _, err := c.result(); err != nil {
				t.Fatal(err)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 90s: %d stdout and %d stderr lines, want %d each", stdout.lines.Load(), stderr.lines.Load(), 2*chatterLines)
		}
		time.Sleep(50 * time.Millisecond)
	}
	in.signal(syscall.SIGTERM)
	if code := in.wait(20 * time.Second); code != 0 {
		t.Fatalf("exit status %d", code)
	}
	want := map[[2]int]int{}
	for _, w := range st.Workers {
		want[[2]int{w.Slot, w.PID}] = chatterLines
	}
	for _, c := range []*lineCheck{stdout, stderr} {
		got, err := c.result()
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(got, want) {
			t.Errorf("%s: lines by slot and pid %v, want %v", c.stream, got, want)
		}
	}
	if strings.Contains(in.stderr.String(), "dropped") {
		t.Errorf("prefork dropped lines")
	}
}

// TestWorkerOutputStalledReader: nothing reads prefork's stdout for 5 s while
// the workers write to theirs: requests are answered within a second all the
// while, and once it is read again prefork says how many lines it dropped.
func TestWorkerOutputStalledReader(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	sock := ctlSock(t)
	in, _, _ := startOutput(t, w, "prefix", []string{"TESTWORKER_CHATTER=forever"}, "-n", "2", "--control", sock)
	w.Close()
	in.readyWorkers(2, 20*time.Second)
	addr := in.addr()
	stalled := time.Now()
	var slowest time.Duration
	n := 0
	for time.Since(stalled) < 5*time.Second {
		start := time.Now()
		if _, err := get(addr); err != nil {
			t.Fatalf("request after %v of a stalled stdout: %v", time.Since(stalled).Round(time.Millisecond), err)
		}
		d := time.Since(start)
		if d > time.Second {
			t.Fatalf("a request took %v while stdout stalled", d)
		}
		slowest, n = max(slowest, d), n+1
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%d requests while stdout stalled for 5s, the slowest %v", n, slowest)
	var mu sync.Mutex
	var out bytes.Buffer
	go func() {
		b := make([]byte, 64<<10)
		for {
			n, err := r.Read(b)
			mu.Lock()
			out.Write(b[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	dropped := regexp.MustCompile(`worker output lines dropped.* stream=stdout lines=(\d+)`)
	deadline := time.Now().Add(20 * time.Second)
	for dropped.FindString(in.stderr.String()) == "" {
		if time.Now().After(deadline) {
			t.Fatal("no log line says how many lines were dropped")
		}
		time.Sleep(50 * time.Millisecond)
	}
	metrics := mustCtl(t, sock, "metrics")
	m := regexp.MustCompile(`(?m)^prefork_output_dropped_lines_total (\d+)$`).FindStringSubmatch(metrics)
	if m == nil || m[1] == "0" {
		t.Errorf("prefork_output_dropped_lines_total: %v in\n%s", m, metrics)
	} else {
		t.Logf("prefork_output_dropped_lines_total %s", m[1])
	}
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	whole := out.String()[:strings.LastIndexByte(out.String(), '\n')+1] // what the reader has read so far
	for _, l := range strings.Split(strings.TrimSuffix(whole, "\n"), "\n") {
		if m := prefixHead.FindStringIndex(l); m == nil || l[m[1]:] != strings.Repeat("x", 1023) {
			mu.Unlock()
			t.Fatalf("a line on stdout that is not a whole worker line: %.100q", l)
		}
	}
	mu.Unlock()
	in.signal(syscall.SIGTERM)
	if code := in.wait(20 * time.Second); code != 0 {
		t.Fatalf("exit status %d", code)
	}
}
