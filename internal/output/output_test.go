//go:build linux || darwin

package output

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// lockedBuffer is a writer the test reads once the relay is closed.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// worker makes a pair for a worker in slot 1 with pid 42 of generation 3 and
// returns the ends it would write to, as fd 1 and 2 in a child.
func worker(t *testing.T, r *Relay) (stdout, stderr *os.File) {
	t.Helper()
	p, err := r.NewPair()
	if err != nil {
		t.Fatal(err)
	}
	o, e := p.Files()
	var files []*os.File
	for _, fd := range []uintptr{o, e} {
		d, err := syscall.Dup(int(fd)) // the child's copy: Start closes prefork's
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, os.NewFile(uintptr(d), "child"))
	}
	p.Start(1, 42, 3)
	return files[0], files[1]
}

func TestPrefixLines(t *testing.T) {
	var out, errs lockedBuffer
	r := New(Prefix, &out, &errs, slog.New(slog.DiscardHandler))
	o, e := worker(t, r)
	long := strings.Repeat("x", MaxLine+10)
	o.WriteString("one\n\ntwo\n" + long + "\nlast, no newline")
	e.WriteString("on stderr\n")
	o.Close()
	e.Close()
	r.Close(10 * time.Second)
	want := "1.42| one\n1.42| \n1.42| two\n1.42+ " + long[:MaxLine] + "\n1.42| xxxxxxxxxx\n1.42| last, no newline\n"
	if out.String() != want {
		t.Errorf("stdout:\n%.300q\nwant\n%.300q", out.String(), want)
	}
	if errs.String() != "1.42| on stderr\n" {
		t.Errorf("stderr: %q", errs.String())
	}
}

func TestJSONLines(t *testing.T) {
	var out, errs lockedBuffer
	r := New(JSON, &out, &errs, slog.New(slog.DiscardHandler))
	o, e := worker(t, r)
	o.WriteString(`{"level":"info","msg":"hi"}` + "\n" + `  {"spaced": [1, 2]}  ` + "\n" + `{not json` + "\n" + `"a string"` + "\n<b>&\n")
	o.WriteString(strings.Repeat("y", MaxLine) + "z\n")
	e.WriteString("bad \xff byte")
	o.Close()
	e.Close()
	r.Close(10 * time.Second)
	type rec struct {
		Time       time.Time
		Slot, PID  int
		Generation int
		Stream     string
		Line       json.RawMessage
		Partial    bool
	}
	var got []rec
	for _, l := range strings.SplitAfter(out.String()+errs.String(), "\n") {
		if l == "" {
			continue
		}
		var x rec
		if err := json.Unmarshal([]byte(l), &x); err != nil || !strings.HasSuffix(l, "}\n") {
			t.Fatalf("not one JSON object a line: %v: %.200q", err, l)
		}
		if x.Slot != 1 || x.PID != 42 || x.Generation != 3 || time.Since(x.Time) > time.Minute {
			t.Errorf("slot, pid, generation or time wrong: %.200q", l)
		}
		got = append(got, x)
	}
	want := []struct {
		stream, line string
		partial      bool
	}{
		{"stdout", `{"level":"info","msg":"hi"}`, false},
		{"stdout", `{"spaced": [1, 2]}`, false},
		{"stdout", `"{not json"`, false},
		{"stdout", `"\"a string\""`, false},
		{"stdout", `"<b>&"`, false},
		{"stdout", `"` + strings.Repeat("y", MaxLine) + `"`, true},
		{"stdout", `"z"`, false},
		{"stderr", `"bad \ufffd byte"`, false},
	}
	if len(got) != len(want) {
		t.Fatalf("%d lines, want %d:\n%.500s", len(got), len(want), out.String())
	}
	for i, w := range want {
		if got[i].Stream != w.stream || string(got[i].Line) != w.line || got[i].Partial != w.partial {
			t.Errorf("line %d: %s %.80s partial %v, want %s %.80s partial %v", i, got[i].Stream, got[i].Line, got[i].Partial, w.stream, w.line, w.partial)
		}
	}
}

// blocked is a stream nobody reads until release is closed.
type blocked struct {
	release chan struct{}
	lockedBuffer
}

func (b *blocked) Write(p []byte) (int, error) {
	<-b.release
	return b.lockedBuffer.Write(p)
}

// A stalled stdout: the worker's writes go on (its lines are dropped after
// stallAfter) and, once stdout is read again, the log says how many.
func TestStalledStreamDrops(t *testing.T) {
	stdout := &blocked{release: make(chan struct{})}
	var log lockedBuffer
	r := New(Prefix, stdout, &lockedBuffer{}, slog.New(slog.NewTextHandler(&log, nil)))
	o, e := worker(t, r)
	defer e.Close()
	line := strings.Repeat("w", 1023) + "\n"
	start := time.Now()
	for i := 0; i < 4096; i++ { // 4 MiB: far more than the pipe and WorkerBuffer hold
		if _, err := o.WriteString(line); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the worker's writes took %v while stdout stalled", d)
	}
	deadline := time.Now().Add(10 * time.Second)
	for r.Dropped() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if r.Dropped() == 0 {
		t.Fatal("no line dropped")
	}
	close(stdout.release)
	o.Close()
	e.Close()
	r.Close(10 * time.Second)
	n := r.Dropped()
	if !strings.Contains(log.String(), "worker output lines dropped") || !strings.Contains(log.String(), "lines=") {
		t.Errorf("the log does not say how many lines were dropped: %q", log.String())
	}
	if got := strings.Count(stdout.String(), "\n"); uint64(got)+n != 4096 {
		t.Errorf("%d lines written and %d dropped, want 4096 in all", got, n)
	}
	for _, l := range strings.SplitAfter(stdout.String(), "\n") {
		if l != "" && l != "1.42| "+line {
			t.Fatalf("a line not whole: %.80q", l)
		}
	}
}
