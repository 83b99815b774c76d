//go:build linux || darwin

// Package listenwait tells, from outside and without the server's help,
// whether a worker is waiting for connections: whether the worker or one of
// its descendants is blocked in accept (or, on a handoff channel, in recvmsg)
// on one of the sockets it was given, or has one of them in its epoll, poll or
// select set. On Linux it reads /proc (listenwait_linux.go); on macOS nothing
// can be seen and Check says so.
//
// A Watcher is one goroutine that owns the set of processes coming up and
// looks at each of them with a back-off: often right after its start, then
// every second at most, until it is seen, cannot be seen, or is forgotten.
// Its callers send it messages (Watch, Forget) and hear back on their own
// event channel.
package listenwait

import (
	"errors"
	"syscall"
	"time"
)

// Sock identifies an open socket: the device and inode fstat gives it.
type Sock struct{ Dev, Ino uint64 }

// SockOf is the identity of the socket open at fd.
func SockOf(fd int) (Sock, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return Sock{}, err
	}
	return Sock{Dev: uint64(st.Dev), Ino: uint64(st.Ino)}, nil
}

// Way is how a process was seen waiting.
type Way uint8

const (
	None    Way = iota
	Accept      // blocked in accept or accept4 on the socket
	Receive     // blocked in recvmsg, recvfrom or read on it (a handoff channel, a UDP socket)
	Epoll       // the socket is in one of its epoll sets, for input
	Poll        // blocked in poll or ppoll with the socket in the set, for input
	Select      // blocked in select or pselect6 with the socket in the read set
)

var wayNames = []string{"", "accept", "recv", "epoll", "poll", "select"}

func (w Way) String() string { return wayNames[w] }

// ErrCannotObserve is what Check returns where another process's waiting
// cannot be read at all: macOS, a kernel without /proc/PID/syscall, or a
// worker whose /proc entries prefork may not read.
var ErrCannotObserve = errors.New("cannot see whether the worker waits for connections")

// Report is what a Watcher found for one process: the way it was seen
// waiting, or Err (ErrCannotObserve, wrapped) where it cannot be seen.
type Report struct {
	PID int
	Way Way
	Err error
}

// Back-off between two looks at one process: booting servers are looked at
// often at first, rarely once they take long.
const (
	firstLook = 50 * time.Millisecond
	maxLook   = time.Second
)

type target struct {
	socks []Sock
	due   time.Time
	every time.Duration
}

type request struct {
	pid   int
	socks []Sock // nil: forget pid
}

// Watcher looks at the processes it was asked to watch until each is seen.
type Watcher struct {
	reqs chan request
	quit chan struct{}
	done chan struct{}
}

// New starts a Watcher that sends wrap(r) on events once per process seen or
// found unobservable (it is then forgotten); a send that waits does not keep
// Close waiting.
func New[E any](events chan<- E, wrap func(Report) E) *Watcher {
	w := &Watcher{reqs: make(chan request, 4096), quit: make(chan struct{}), done: make(chan struct{})}
	go w.run(func(r Report) bool {
		select {
		case events <- wrap(r):
			return true
		case <-w.quit:
			return false
		}
	})
	return w
}

// Watch starts watching pid, the leader of a worker, for socks.
func (w *Watcher) Watch(pid int, socks []Sock) {
	if socks == nil {
		socks = []Sock{}
	}
	w.reqs <- request{pid, socks}
}

// Forget stops watching pid.
func (w *Watcher) Forget(pid int) { w.reqs <- request{pid: pid} }

// Close stops the Watcher; no report follows.
func (w *Watcher) Close() {
	close(w.quit)
	<-w.done
}

func (w *Watcher) run(report func(Report) bool) {
	defer close(w.done)
	targets := map[int]*target{}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var next time.Time
		for _, t := range targets {
			if next.IsZero() || t.due.Before(next) {
				next = t.due
			}
		}
		var wake <-chan time.Time
		if !next.IsZero() {
			timer.Reset(time.Until(next))
			wake = timer.C
		}
		select {
		case <-w.quit:
			return
		case r := <-w.reqs:
			if r.socks == nil {
				delete(targets, r.pid)
			} else {
				targets[r.pid] = &target{socks: r.socks, due: time.Now().Add(firstLook), every: firstLook}
			}
		case <-wake:
		}
		timer.Stop()
		now := time.Now()
		for pid, t := range targets {
			if t.due.After(now) {
				continue
			}
			way, err := Check(pid, t.socks)
			switch {
			case err != nil && errors.Is(err, ErrCannotObserve):
				delete(targets, pid)
				if !report(Report{PID: pid, Err: err}) {
					return
				}
			case err != nil: // gone: its exit makes the caller forget it
				delete(targets, pid)
			case way != None:
				delete(targets, pid)
				if !report(Report{PID: pid, Way: way}) {
					return
				}
			default:
				t.every = min(t.every*3/2, maxLook)
				t.due = time.Now().Add(t.every)
			}
		}
	}
}
