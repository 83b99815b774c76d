//go:build linux || darwin

// This file holds the checks prefork makes before it starts any worker: stop
// signals caught from the first instant, the command, the pidfile and status
// file, the listeners, and the descriptor budget of the pool; and, for an
// in-place upgrade's new image, the take-over of the old image's state
// instead (or its way back to the old image).
package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prefork/prefork/internal/demo"
	"github.com/prefork/prefork/internal/output"
	"github.com/prefork/prefork/internal/procstat"
	"github.com/prefork/prefork/internal/sock"
	"github.com/prefork/prefork/internal/upgrade"
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
	if os.Getenv(upgrade.StateEnv) != "" {
		earlySignals = catchHeldSignals()
		return
	}
	earlySignals = catchSignals()
}

// catchHeldSignals is catchSignals in an upgrade's new image, where the
// signals sent during the exec are pending, blocked (reload.go). os/signal
// unblocks a signal a moment before it installs its handler: a TTIN or TTOU
// pending then would take its default action and stop prefork. Those two are
// taken out of the pending set first (ignoring a signal discards it pending)
// and put on the channel; the others reach the channel on their own.
func catchHeldSignals() chan os.Signal {
	pending := upgrade.PendingSignals()
	signal.Ignore(syscall.SIGTTIN, syscall.SIGTTOU)
	sigs := catchSignals()
	for _, sig := range []syscall.Signal{syscall.SIGTTIN, syscall.SIGTTOU} {
		if pending&(1<<(sig-1)) != 0 {
			sigs <- sig
		}
	}
	return sigs
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
	open := procstat.OpenFds()
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

// isFdLimit reports whether err comes from running out of descriptors.
func isFdLimit(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// prepare resolves the command, --user and the worker count, checks the
// files prefork writes, and binds (or takes from socket activation) the
// listeners: a start's work before the notify sockets.
func (s *supervisor) prepare(uid, gid *int) (int, error) {
	c := s.c
	var err error
	s.argv = c.command
	if c.demo {
		s.argv = []string{"prefork-demo", demo.Arg}
	}
	if s.wd, err = newWorkdir(); err != nil {
		return exitFailure, err
	}
	if code, err := s.resolve(); err != nil {
		return code, err
	}
	if c.user != "" {
		if s.cred, *uid, *gid, err = lookupUser(c.user); err != nil {
			return exitUsage, fmt.Errorf("--user %s: %v", c.user, err)
		}
	}
	if c.workers == 0 {
		c.workers = autoWorkers()
	}
	if c.pidfile != "" {
		if err := checkPidfile(c.pidfile); err != nil {
			return exitFailure, fmt.Errorf("--pidfile %s: %v", c.pidfile, err)
		}
	}
	if c.statusFile != "" {
		if err := checkWritable(c.statusFile); err != nil {
			return exitFailure, fmt.Errorf("--status-file %s: %v", c.statusFile, err)
		}
	}
	if len(c.specs) == 0 {
		if s.listeners, err = sock.Adopt(); err != nil {
			return exitFailure, fmt.Errorf("socket activation: %v", err)
		}
		if len(s.listeners) == 0 && !nodeClusterOn(c, s.path) {
			return exitUsage, fmt.Errorf("no listeners: give -p PORT or -l ADDR, or start prefork by socket activation")
		}
		if len(s.listeners) == 0 && c.nodeSendServer != "" { // handle-passing workers ask for nothing to bind
			return exitUsage, fmt.Errorf("--node-send-server sends prefork's listeners: give -p PORT or -l ADDR")
		}
		for _, l := range s.listeners {
			if c.mode == modeRR && l.Spec.Network == "udp" {
				return exitUsage, fmt.Errorf("--mode rr hands over stream connections: adopted socket %s is UDP", l.Spec.Name)
			}
		}
	} else if s.listeners, err = sock.Bind(c.specs, c.backlog, c.mode == modeReuseport); err != nil {
		return exitFailure, err
	}
	return 0, nil
}

// The in-place upgrade, the new image's side (reload.go holds the old
// image's; workers.go takes the workers over). The state is read and
// checked before anything is started; a failure up to the moment the
// workers are taken over hands the state back, unchanged, to the old image
// (its binary is kept open), which takes its own state over again and tells
// the client.

// takeoverRefusal, when set, makes this image refuse every state: a test
// build's way to play a new binary that cannot take over. Nothing else sets it.
var takeoverRefusal string

// state is the state taken over; nil when none (a is nil: no upgrade).
func (a *adoption) state() *upgrade.State {
	if a == nil {
		return nil
	}
	return a.st
}

// adoption is the state this image takes over from the one before it, or,
// after a way back, takes back.
type adoption struct {
	fd, exeFD int            // the state's descriptor; the binary that wrote it
	st        *upgrade.State // nil when it could not be read
	back      string         // this is the old image again: why the new one handed the state back
	files     []*os.File     // what the take-over opened on the inherited descriptors
}

// answerUpgradeCheck is the check mode: the formats this binary reads.
func answerUpgradeCheck() int {
	fmt.Print(upgrade.CheckLine(version()))
	return exitOK
}

// adoptMain runs in a process started with upgrade.StateEnv: it reads the
// state and supervises from it, or hands it back.
func adoptMain(fd, exeFD int, err error, stderr io.Writer) int {
	a := &adoption{fd: fd, exeFD: exeFD, back: os.Getenv(upgrade.RollbackEnv)}
	os.Unsetenv(upgrade.RollbackEnv)
	log := newLogger(stderr, logText, 0)
	var b []byte
	if err == nil {
		b, err = upgrade.Read(fd)
	}
	if err == nil {
		a.st, err = upgrade.Decode(b)
	}
	var c *config
	if err == nil && len(a.st.Args) == 0 {
		err = errors.New("the state has no command line")
	}
	if err == nil {
		c, err = parseArgs(a.st.Args[1:])
	}
	if err == nil {
		err = a.check(c)
	}
	if err != nil {
		a.handBack(log, err.Error())
		log.Error("cannot take over the state", "err", err)
		return exitFailure
	}
	return supervise(c, stderr, a)
}

// check refuses a state this image cannot take over.
func (a *adoption) check(c *config) error {
	st := a.st
	switch {
	case takeoverRefusal != "":
		return errors.New(takeoverRefusal)
	case c.mode == modeRR:
		return errors.New("this prefork does not take over --mode rr")
	case c.workerOutput != output.Inherit:
		return fmt.Errorf("this prefork does not take over --worker-output %s", c.workerOutput)
	case c.ctl != "":
		return errors.New("the state's command line is a control client's")
	}
	return st.Check(c.mode == modeReuseport)
}

// handBack executes the old image with the state, unchanged; it returns only
// when it cannot, or when this is the old image already (a way back has no
// way back).
func (a *adoption) handBack(log *slog.Logger, why string) {
	if a == nil {
		return
	}
	if a.back != "" {
		log.Error("cannot take back prefork's own state after a failed upgrade", "err", why)
		return
	}
	log.Error("upgrade: this binary cannot take over; handing the state back to the old prefork", "err", why)
	fds := []int{a.fd, a.exeFD}
	if a.st != nil {
		fds = append(fds, a.st.FDs()...)
	}
	signal.Ignore(fatalSignals...)
	err := upgrade.Keep(fds)
	if err == nil {
		err = newSpawner().exec(upgrade.FDPath(a.exeFD), os.Args, upgrade.BackEnv(os.Environ(), a.fd, a.exeFD, why))
	}
	log.Error("cannot hand the state back to the old prefork", "err", err)
}

// inherit takes the command, --user, the worker count, the listeners and the
// upward socket from the state; it returns the workers' uid and gid.
func (s *supervisor) inherit() (uid, gid int) {
	st := s.adopt.st
	s.path, s.argv, s.wd, s.cred = st.Command, st.Argv, workdir{path: st.WorkDir, dir: st.RealDir}, st.Cred
	s.c.workers, s.gen, s.upOnce, s.lastStatus, s.ctl.reloadFailures = st.Workers, st.Generation, st.UpOnce, st.LastStatus, st.ReloadFailures
	if st.Upstream != "" {
		s.up = &upstream{st.Upstream}
	}
	for _, l := range st.Listeners {
		spec := sock.Spec{Name: l.Name, Network: l.Network, Addr: l.Addr, Text: l.Text}
		s.listeners = append(s.listeners, sock.Restore(spec, l.FD, l.Bound, l.UnixPath))
	}
	return st.UID, st.GID
}

// notifyDir is the workers' notify socket directory, as the state has it.
func (a *adoption) notifyDir() *notifyDir {
	d := &notifyDir{path: a.st.Notify.Path, uid: a.st.Notify.UID, gid: a.st.Notify.GID}
	d.seq.Store(a.st.Notify.Seq)
	return d
}
