//go:build linux || darwin

// This file starts worker processes and reaps every child. Forks happen on one
// goroutine locked to an OS thread that never exits (the parent-death signal
// fires when the forking thread dies, not the process); one reaper does all the
// waiting, so no exit status is ever stolen.
package main

import (
	"github.com/prefork/prefork/internal/listenwait"
	"os"
	"os/signal"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
)

// env is the supervisor's way to the world outside its state: start a worker's
// process, signal one, read the clock, arm a timer that sends an event. Set
// once (realEnv); slots_test.go drives the slot table through a fake one, with
// no process and no sleep.
type env struct {
	start func(sl *slot) (proc, error)                // a worker's channel, notify socket and process
	kill  func(pid int, sig syscall.Signal)           // kill(2): a negative pid is a process group
	now   func() time.Time                            // the clock
	after func(d time.Duration, ev event) func() bool // ev is sent to the owner after d; the result stops it
	// watch starts looking whether pid waits for connections on socks (a
	// listenEvent tells); the result stops it. nil where nothing can be seen.
	watch func(pid int, socks []listenwait.Sock) func()
}

// proc is a started worker process as env.start returns it.
type proc struct {
	pid    int
	link   link              // its channel (channel.go)
	notify *notifySocket     // its notify socket; nil in tests
	socks  []listenwait.Sock // what it inherited at fd 3, 4, …: where it waits for connections
}

func (s *supervisor) realEnv() env {
	var watch func(int, []listenwait.Sock) func()
	if s.lw != nil {
		watch = func(pid int, socks []listenwait.Sock) func() {
			s.lw.Watch(pid, socks)
			return func() { s.lw.Forget(pid) }
		}
	}
	return env{
		watch: watch,
		start: s.startProcess,
		kill:  func(pid int, sig syscall.Signal) { syscall.Kill(pid, sig) },
		now:   time.Now,
		after: func(d time.Duration, ev event) func() bool {
			return time.AfterFunc(d, func() { s.events <- ev }).Stop
		},
	}
}

// spawnRequest asks the spawner to start argv[0] with these descriptors at 0, 1, 2, 3….
type spawnRequest struct {
	path  string
	argv  []string
	env   []string
	files []uintptr
	reply chan spawnResult
}

type spawnResult struct {
	pid int
	err error
}

// spawner runs ForkExec on a locked thread.
type spawner chan spawnRequest

func newSpawner() spawner {
	s := make(spawner)
	go func() {
		runtime.LockOSThread() // never unlocked: this thread lives as long as prefork
		for r := range s {
			pid, err := syscall.ForkExec(r.path, r.argv, &syscall.ProcAttr{
				Env:   r.env,
				Files: r.files,
				Sys:   workerProcAttr(),
			})
			r.reply <- spawnResult{pid, err}
		}
	}()
	return s
}

func (s spawner) start(path string, argv, env []string, files []uintptr) (int, error) {
	r := spawnRequest{path, argv, env, files, make(chan spawnResult, 1)}
	s <- r
	res := <-r.reply
	return res.pid, res.err
}

// exitEvent is a reaped child: a worker or an orphan inherited as pid 1 or subreaper.
type exitEvent struct {
	pid    int
	status int // exit code, or 128+signal
}

// noChildrenEvent says that prefork has no child left at all.
type noChildrenEvent struct{}

// reaper waits for every child of prefork and sends what it reaps to the owner.
type reaper struct {
	kick      chan struct{}
	wantEmpty atomic.Bool // report noChildrenEvent when nothing is left
}

func startReaper(events chan<- event) *reaper {
	r := &reaper{kick: make(chan struct{}, 1)}
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)
	go func() {
		for {
			for {
				var ws syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if err == syscall.EINTR {
					continue
				}
				if err == syscall.ECHILD {
					if r.wantEmpty.Load() {
						events <- noChildrenEvent{}
					}
					break
				}
				if err != nil || pid <= 0 {
					break
				}
				events <- exitEvent{pid, exitStatus(ws)}
			}
			select {
			case <-sigchld:
			case <-r.kick:
			}
		}
	}()
	return r
}

// check makes the reaper look again now.
func (r *reaper) check() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// exitStatus maps a wait status the way shells do: 128+N for a signal.
func exitStatus(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}
