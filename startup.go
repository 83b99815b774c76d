//go:build linux || darwin

// This file holds the checks prefork makes before it starts any worker: stop
// signals caught from the first instant, the pidfile and status file, and the
// descriptor budget of the pool.
package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prefork/prefork/internal/demo"
)

// handledSignals are the signals the supervisor acts on.
var handledSignals = []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT,
	syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH}

// earlySignals holds the signals prefork handles, caught from package
// initialisation on: a stop signal sent the moment prefork was started is then
// a request, not the end of prefork by the signal. Only the Go runtime's own
// start-up comes before it (Go unblocks SIGTERM, so even a blocked TERM would
// be delivered then), and prefork has created nothing by then. The exec shim
// and the demo worker are prefork's binary too, and keep the default actions.
var earlySignals chan os.Signal

// earlySignalsOff keeps the default actions in a process of prefork's binary
// that is not prefork, as the tests' workers are: the tests set it from a
// package variable's initialiser, which runs before any init function.
var earlySignalsOff bool

func init() {
	if earlySignalsOff || os.Getenv(shimEnv) != "" || len(os.Args) > 1 && os.Args[1] == demo.Arg {
		return
	}
	earlySignals = catchSignals()
}

// catchSignals catches the signals prefork handles, and makes a broken stderr
// lose log lines instead of killing prefork with SIGPIPE (Go dies of SIGPIPE
// only on writes to fd 1 and 2, and only while SIGPIPE is not ignored).
// Ignoring SIGPIPE does not reach workers: the shim is a Go program, which
// installs its own SIGPIPE handler over the inherited SIG_IGN, and execve resets
// a handled signal to SIG_DFL.
func catchSignals() chan os.Signal {
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, handledSignals...)
	signal.Ignore(syscall.SIGPIPE)
	return sigs
}

// takeSignals is the first thing supervise does: it takes over the signals
// caught since start-up (catching them now if init did not).
func takeSignals() chan os.Signal {
	sigs := earlySignals
	earlySignals = nil
	if sigs == nil {
		sigs = catchSignals()
	}
	return sigs
}

// releaseEarlySignals gives the signals caught since start-up their default
// actions back, in a process of prefork's binary that turns out not to
// supervise anything (the control client).
func releaseEarlySignals() {
	if earlySignals != nil {
		releaseSignals(earlySignals)
		earlySignals = nil
	}
}

// releaseSignals undoes catchSignals, for a supervisor that returns into a
// process that goes on (the tests).
func releaseSignals(sigs chan os.Signal) {
	signal.Stop(sigs)
	pipe := make(chan os.Signal, 1)
	signal.Notify(pipe, syscall.SIGPIPE)
	signal.Stop(pipe)
}

// stopBeforeStart reports whether a stop signal arrived while prefork was
// starting; other signals that arrived meanwhile are put back for the loop.
func stopBeforeStart(sigs chan os.Signal) bool {
	var early []os.Signal
	for {
		select {
		case sig := <-sigs:
			switch sig {
			case syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT:
				return true
			}
			early = append(early, sig)
			continue
		default:
		}
		break
	}
	for _, sig := range early {
		select {
		case sigs <- sig:
		default:
		}
	}
	return false
}

// checkPidfile refuses a pidfile that names a live process other than prefork
// itself (another prefork, most likely); a stale one is replaced later: its
// process is gone, or (Linux) started after the file was written, so its pid
// was reused. It also makes sure the file can be written where it is asked for.
func checkPidfile(path string) error {
	if b, err := os.ReadFile(path); err == nil {
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err == nil && pid > 0 && pid != os.Getpid() && running(pid) {
			fi, err := os.Stat(path)
			if started, ok := pidStarted(pid); !ok || err != nil || !started.After(fi.ModTime().Add(time.Second)) {
				return fmt.Errorf("it names pid %d, which is running (another prefork?); stop it or remove the file", pid)
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	} else {
		return checkWritable(path)
	}
	// It exists: prefork writes it in place, so the file must take a write
	// (its directory need not take new files).
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return unwrapPath(err)
	}
	return f.Close()
}

// running reports whether a process with this pid exists.
func running(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// checkWritable makes sure a file prefork writes (and replaces by rename) can
// live at path: its directory exists and takes a new file, and path is not a
// directory.
func checkWritable(path string) error {
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return errors.New("is a directory")
	}
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("directory %s does not exist", dir)
	case err != nil:
		return err
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory", dir)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".")
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Errorf("cannot create files in %s: %w", dir, err)
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}

// fdMargin is what the budget keeps free beyond the pool's own descriptors: the
// Go runtime's poller, fork pipes, the status file being rewritten, the rr
// dispatcher's wake-ups, a connection or two.
const fdMargin = 32

// fdBudget is what a pool needs, counted from what is open now (listeners
// included): per worker its notify socket, in rr mode the prefork end of its
// handoff channel, in reuseport mode the sockets of its slot (slot 0 uses the
// listeners themselves); room for one more worker, the replacement a reload
// or a restart brings up next to the one it replaces; and the margin.
func fdBudget(m mode, listeners, workers, open int) int {
	perWorker := 1
	if m == modeRR {
		perWorker++
	}
	need := open + (workers+1)*perWorker + fdMargin
	if m == modeReuseport {
		need += workers * listeners
	}
	return need
}

// checkDescriptors makes sure the pool fits RLIMIT_NOFILE before any worker
// starts. Go already raised prefork's soft limit to the hard one at start (and
// gives workers the soft limit prefork was started with), so the hard limit is
// what counts here. In rr mode the connections prefork holds until workers ack
// them (up to --rr-window per worker) only earn a warning: the dispatcher
// waits for a free descriptor rather than failing.
func checkDescriptors(c *config, listeners int) (warn string, err error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return "", nil
	}
	open := countOpenFds()
	if open < 0 || lim.Cur >= 1<<31 {
		return "", nil
	}
	workers := max(c.workers, c.poolMax) // an elastic pool may grow to its maximum
	need := fdBudget(c.mode, listeners, workers, open)
	if uint64(need) > lim.Cur {
		return "", &fdLimitError{fmt.Sprintf("%d workers in %s mode need about %d open descriptors; the limit is %d (ulimit -n)",
			workers, c.mode, need, lim.Cur), need}
	}
	if c.mode == modeRR {
		if held := need + workers*c.rrWindow; uint64(held) > lim.Cur {
			warn = fmt.Sprintf("rr mode may hold up to %d connections until workers ack them (%d workers × --rr-window %d); "+
				"with the descriptor limit at %d (ulimit -n), accepting pauses when it is reached", workers*c.rrWindow, workers, c.rrWindow, lim.Cur)
		}
	}
	return warn, nil
}

// fdLimitError says the pool does not fit the descriptor limit.
type fdLimitError struct {
	msg  string
	need int
}

func (e *fdLimitError) Error() string { return e.msg }

func (e *fdLimitError) hint() string {
	return fmt.Sprintf("hint: raise the limit (ulimit -n %d, or LimitNOFILE= in a systemd unit) or run fewer workers (-n)", e.need)
}

// countOpenFds counts prefork's open descriptors; -1 when it cannot tell.
func countOpenFds() int {
	f, err := os.Open("/dev/fd")
	if err != nil {
		return -1
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return -1
	}
	return len(names) - 1 // the directory itself
}

// isFdLimit reports whether err comes from running out of descriptors.
func isFdLimit(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}
