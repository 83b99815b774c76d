//go:build linux || darwin

// This file starts worker processes and reaps every child. Forks happen on one
// goroutine locked to an OS thread that never exits (the parent-death signal
// fires when the forking thread dies, not the process): in prefork's binary
// the main goroutine on the process's main thread, which is also the thread
// an upgrade's execve runs on (execve ends every other thread, and a worker
// forked by one of those would get its parent-death signal). One reaper does
// all the waiting, so no exit status is ever stolen.
package main

import (
	"github.com/prefork/prefork/internal/listenwait"
	"github.com/prefork/prefork/internal/upgrade"
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

// spawnRequest asks the spawner to start argv[0] with these descriptors at 0,
// 1, 2, 3…; or, with exec, to execve path in place of prefork (an upgrade,
// or its way back), with the signals in held blocked across it.
type spawnRequest struct {
	path  string
	argv  []string
	env   []string
	files []uintptr
	exec  bool
	reply chan spawnResult
}

type spawnResult struct {
	pid int
	err error
}

// spawner runs ForkExec, and the upgrade's execve, on a locked thread.
type spawner chan spawnRequest

// mainThread is the spawner that the main goroutine serves on the main
// thread (onMainThread); nil where nothing serves one, as when a test runs
// the supervisor in its own process.
var mainThread spawner

func init() { runtime.LockOSThread() } // the main goroutine stays on the main thread

// onMainThread runs f on a goroutine of its own while the main goroutine,
// locked to the main thread since init, serves the spawner; it returns f's
// result.
func onMainThread(f func() int) int {
	mainThread = make(spawner)
	done := make(chan int, 1)
	go func() { done <- f() }()
	for {
		select {
		case r := <-mainThread:
			r.reply <- r.serve()
		case code := <-done:
			return code
		}
	}
}

func newSpawner() spawner {
	if mainThread != nil {
		return mainThread
	}
	s := make(spawner)
	go func() {
		runtime.LockOSThread() // never unlocked: this thread lives as long as prefork
		for r := range s {
			r.reply <- r.serve()
		}
	}()
	return s
}

// heldSignals are blocked in the thread that executes the new image: a
// signal sent during the exec waits for the new image to catch it.
// fatalSignals are also ignored across the exec: the Go runtime of the new
// image unblocks them before prefork catches them, and their default action
// would end prefork, and with it every worker (their parent-death signal).
var (
	heldSignals  = []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH}
	fatalSignals = []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT}
)

func (r spawnRequest) serve() spawnResult {
	if r.exec {
		// Blocked in the one thread that survives execve, a signal sent in
		// the meantime waits for the new image instead of finding no handler.
		old, err := upgrade.BlockSignals(heldSignals)
		if err == nil {
			err = syscall.Exec(r.path, r.argv, r.env)
			upgrade.SetMask(old)
		}
		return spawnResult{-1, err}
	}
	pid, err := syscall.ForkExec(r.path, r.argv, &syscall.ProcAttr{
		Env:   r.env,
		Files: r.files,
		Sys:   workerProcAttr(),
	})
	return spawnResult{pid, err}
}

func (s spawner) start(path string, argv, env []string, files []uintptr) (int, error) {
	r := spawnRequest{path: path, argv: argv, env: env, files: files, reply: make(chan spawnResult, 1)}
	s <- r
	res := <-r.reply
	return res.pid, res.err
}

// exec replaces prefork's image by path's, on the spawner's thread; it
// returns only if execve failed.
func (s spawner) exec(path string, argv, env []string) error {
	r := spawnRequest{path: path, argv: argv, env: env, exec: true, reply: make(chan spawnResult, 1)}
	s <- r
	return (<-r.reply).err
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
	hold      chan chan struct{} // an upgrade's: no wait4 until the channel sent closes
	wantEmpty atomic.Bool        // report noChildrenEvent when nothing is left
}

func startReaper(events chan<- event) *reaper {
	r := &reaper{kick: make(chan struct{}, 1), hold: make(chan chan struct{})}
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
			case resume := <-r.hold:
				<-resume
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
