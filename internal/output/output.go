//go:build linux || darwin

// Package output relays workers' stdout and stderr for --worker-output prefix
// and json: each worker writes into a pipe of its own per stream, and prefork
// writes every line it reads there to its own stdout or stderr, labelled with
// the worker's slot and pid (prefix), or as one JSON object (json).
//
// Goroutines. Each pipe has a reader goroutine: it splits what the worker
// writes into lines (a line longer than MaxLine is split, its pieces
// marked), formats each and queues it for the stream's writer. Each stream
// (stdout, stderr) has one writer goroutine, the only one that writes the
// relayed lines: it takes whole lines off the queue and writes them, several
// at a time, so no output line holds bytes of two workers. Nothing else is
// shared. A worker's reader queues at most WorkerBuffer bytes: beyond that it
// waits for the writer, as a worker writing to a pipe waits for its reader,
// but only while the writer makes progress. Once the writer has been stuck
// in one write for stallAfter (whatever reads prefork's stdout stalls), lines
// that find no room are dropped and counted; the writer logs how many once it
// writes again, and Dropped counts them all. The workers keep running: the
// readers keep reading their pipes.
//
// The owner (prefork's supervisor loop) makes a Pair per worker before it
// starts it, gives the child the pair's write ends as fd 1 and 2, and starts
// or aborts the pair once it knows the outcome; none of these calls waits on
// output.
package output

import (
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Mode is --worker-output.
type Mode uint8

const (
	Inherit Mode = iota // workers write to prefork's own stdout and stderr
	Prefix              // each line as "SLOT.PID| line"
	JSON                // each line as one JSON object
)

// Names are the modes as --worker-output takes them, by value.
var Names = []string{"inherit", "prefix", "json"}

func (m Mode) String() string { return Names[m] }

const (
	// MaxLine is the longest line relayed whole; a longer one is written in
	// pieces of MaxLine bytes, each but the last marked as continued.
	MaxLine = 64 << 10
	// WorkerBuffer bounds the bytes of one worker's stream queued for the writer.
	WorkerBuffer = 256 << 10
	queueLen     = 4096 // lines queued per stream, every worker's together
	writeBatch   = 64 << 10
	// stallAfter: a writer stuck this long in one write is stalled: the
	// lines that find no room are dropped rather than waiting for it.
	stallAfter = time.Second
)

// Relay is the relay of one prefork run.
type Relay struct {
	mode    Mode
	log     *slog.Logger
	streams [2]*stream
	dropped atomic.Uint64
	readers sync.WaitGroup
}

// stream is prefork's stdout or stderr and its writer goroutine.
type stream struct {
	name       string
	w          io.Writer
	q          chan item
	kick       chan struct{} // a drop happened: report it once the writer can
	stop       chan struct{}
	done       chan struct{}
	unreported atomic.Uint64 // drops not logged yet
	writing    atomic.Int64  // when the write under way began (Unix nanoseconds); 0: none
	log        *slog.Logger
}

// item is one formatted line (or a piece of one), newline included.
type item struct {
	b   []byte
	src *source
}

// New starts the writers of a relay in mode (Prefix or JSON) onto stdout and
// stderr; log is prefork's own logger, which reports dropped lines.
func New(mode Mode, stdout, stderr io.Writer, log *slog.Logger) *Relay {
	r := &Relay{mode: mode, log: log}
	for i, w := range []io.Writer{stdout, stderr} {
		s := &stream{name: []string{"stdout", "stderr"}[i], w: w, q: make(chan item, queueLen),
			kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}), log: log}
		r.streams[i] = s
		go s.run()
	}
	return r
}

// Dropped is the number of lines dropped so far because a writer fell behind.
func (r *Relay) Dropped() uint64 { return r.dropped.Load() }

// Close waits up to wait for the readers (their workers are gone: each ends at
// end of file), then lets the writers write what is queued, within wait too:
// a stream nobody reads does not hold prefork's exit up.
func (r *Relay) Close(wait time.Duration) {
	readers := make(chan struct{})
	go func() { r.readers.Wait(); close(readers) }()
	deadline := time.After(wait)
	select {
	case <-readers:
	case <-deadline:
	}
	for _, s := range r.streams {
		close(s.stop)
	}
	for _, s := range r.streams {
		select {
		case <-s.done:
		case <-deadline:
			return
		}
	}
}

// run is the stream's writer: whole lines, up to writeBatch bytes a write.
func (s *stream) run() {
	defer close(s.done)
	buf := make([]byte, 0, writeBatch)
	for {
		select {
		case it := <-s.q:
			buf = s.take(buf[:0], it)
			for len(buf) < writeBatch && len(s.q) > 0 {
				buf = s.take(buf, <-s.q)
			}
			s.write(buf)
		case <-s.kick:
		case <-s.stop:
			for len(s.q) > 0 {
				s.write(s.take(buf[:0], <-s.q))
			}
			s.report()
			return
		}
		if len(s.q) == 0 {
			s.report()
		}
	}
}

// write writes whole lines; a failing stream loses them, as it loses
// prefork's own log lines.
func (s *stream) write(b []byte) {
	s.writing.Store(time.Now().UnixNano())
	s.w.Write(b)
	s.writing.Store(0)
}

// take appends a queued line to buf: it no longer counts against its worker.
func (s *stream) take(buf []byte, it item) []byte {
	it.src.queued.Add(-int64(len(it.b)))
	select {
	case it.src.room <- struct{}{}:
	default:
	}
	return append(buf, it.b...)
}

// report logs the lines dropped since the last report.
func (s *stream) report() {
	if n := s.unreported.Swap(0); n > 0 {
		s.log.Warn("worker output lines dropped: prefork's "+s.name+" was not read fast enough", "stream", s.name, "lines", n)
	}
}

// source is one worker's stream as its reader queues it.
type source struct {
	queued atomic.Int64  // its bytes queued for the writer
	room   chan struct{} // the writer took one of its lines
}

// put queues one line of a worker's. While the worker has WorkerBuffer bytes
// queued, or the queue is full, it waits for the writer, so that a slow
// reader of prefork's output slows the worker down as a pipe would; but once
// the writer has been stuck in one write for stallAfter, the line is dropped.
func (r *Relay) put(s *stream, b []byte, src *source) {
	n := int64(len(b))
	var wait *time.Timer
	for {
		if src.queued.Load()+n <= WorkerBuffer {
			src.queued.Add(n)
			select {
			case s.q <- item{b, src}:
				if wait != nil {
					wait.Stop()
				}
				return
			default:
				src.queued.Add(-n)
			}
		}
		if s.stalled() {
			break
		}
		if wait == nil {
			wait = time.NewTimer(stallAfter / 4)
		} else {
			wait.Reset(stallAfter / 4)
		}
		select {
		case <-src.room:
		case <-wait.C:
		}
	}
	if wait != nil {
		wait.Stop()
	}
	r.dropped.Add(1)
	s.unreported.Add(1)
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// stalled reports whether the writer has been in one write for stallAfter.
func (s *stream) stalled() bool {
	t := s.writing.Load()
	return t != 0 && time.Since(time.Unix(0, t)) > stallAfter
}

// Pair is one worker's two pipes: the child writes into Files, prefork reads
// the other ends.
type Pair struct {
	r      *Relay
	rd, wr [2]*os.File
}

// NewPair makes a worker's pipes, close-on-exec: only the worker they are
// given to (as fd 1 and 2) gets them.
func (r *Relay) NewPair() (*Pair, error) {
	p := &Pair{r: r}
	for i := range p.rd {
		rd, wr, err := os.Pipe()
		if err != nil {
			p.Abort()
			return nil, err
		}
		p.rd[i], p.wr[i] = rd, wr
	}
	return p, nil
}

// Files are the child's ends, stdout and stderr, in blocking mode, for the
// worker's fd 1 and 2; they stay open until Start or Abort.
func (p *Pair) Files() (stdout, stderr uintptr) {
	return p.wr[0].Fd(), p.wr[1].Fd() // Fd makes them blocking: the worker's writes wait, never fail with EAGAIN
}

// Start closes prefork's copies of the child's ends and relays what the
// worker in slot, with pid, of generation gen writes, until it and every
// process that shares its ends has closed them.
func (p *Pair) Start(slot, pid, gen int) {
	for i := range p.rd {
		p.wr[i].Close()
		p.r.readers.Add(1)
		go p.r.read(p.rd[i], p.r.streams[i], newLabel(p.r.mode, slot, pid, gen, p.r.streams[i].name))
	}
}

// Abort closes every end: the worker was not started.
func (p *Pair) Abort() {
	for i := range p.rd {
		for _, f := range []*os.File{p.rd[i], p.wr[i]} {
			if f != nil {
				f.Close()
			}
		}
	}
}
