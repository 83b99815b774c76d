//go:build linux || darwin

// Package upgrade holds what one prefork image hands the next when prefork
// re-executes its newly installed binary in place (prefork --ctl PATH
// upgrade): the state, its versioned format and its encoding on an inherited
// descriptor; the check a binary answers before it is executed; and the
// descriptor work around the exec (exec_linux.go).
//
// The versioning rule. Version is the state format this binary writes;
// MinVersion the oldest it reads. A change an older reader would adopt
// wrongly (a field removed, renamed or given another meaning, a descriptor it
// would not keep) takes a new Version; a field that an older reader may ignore
// (JSON drops unknown fields) keeps it. A binary that no longer reads a format
// raises MinVersion. Before anything changes, the running prefork asks the new
// binary which formats it reads (Check); one that cannot read the state the
// running one writes, older or newer, is refused. A binary that gets a state
// it cannot read anyway hands it back, unchanged, to the image that wrote it.
package upgrade

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The formats this binary writes and reads. Variables only so that a test
// build can play a prefork of another format; nothing else sets them.
var (
	Version    = 1
	MinVersion = 1
)

// The environment that tells a process of prefork's binary what it is.
const (
	CheckEnv    = "PREFORK_UPGRADE_CHECK"    // answer the check on stdout and exit
	StateEnv    = "PREFORK_UPGRADE_STATE"    // the descriptor that holds the state: adopt it
	RollbackEnv = "PREFORK_UPGRADE_ROLLBACK" // why the new image handed the state back
)

// checkTag starts the line a binary answers the check with.
const checkTag = "prefork-upgrade-check"

// State is everything the running image hands over. Descriptors are numbers
// in the process, kept open across the exec; durations are what remained of
// a deadline (or how old something was) when the state was written.
type State struct {
	Version int    `json:"version"`
	Writer  string `json:"writer"` // the prefork version that wrote it

	Args  []string `json:"args"`   // prefork's command line, argv[0] first
	Exe   string   `json:"exe"`    // the path prefork was started from: the binary checked and executed
	ExeFD int      `json:"exe_fd"` // the writer's own binary, for the way back

	Command string   `json:"command"`  // the worker command, resolved
	Argv    []string `json:"argv"`     // its argv
	WorkDir string   `json:"work_dir"` // where workers start: as given, and resolved
	RealDir string   `json:"real_dir"`
	Cred    string   `json:"cred"` // --user, for the shim
	UID     int      `json:"uid"`
	GID     int      `json:"gid"`

	Workers        int    `json:"workers"`    // the worker count prefork started with (-n, auto resolved)
	Generation     int    `json:"generation"` // the current generation
	ReloadFailures int    `json:"reload_failures"`
	UpOnce         bool   `json:"up_once"`     // READY=1 was sent upward
	LastStatus     string `json:"last_status"` // the STATUS= line last sent upward
	Upstream       string `json:"upstream"`    // prefork's own NOTIFY_SOCKET; "" when none

	Listeners []Listener `json:"listeners"`
	Slots     []Slot     `json:"slots"`
	Procs     []Worker   `json:"procs"`
	Notify    NotifyDir  `json:"notify"`
	Control   *Socket    `json:"control,omitempty"` // --control's socket
	Client    int        `json:"client"`            // the control connection that asked for the upgrade; -1 none

	// What happened that the writer had not handled yet: workers reaped and
	// notifications read, in order; signals caught.
	Pending []Pending `json:"pending"`
	Signals []int     `json:"signals"`
}

// Listener is one of prefork's listening sockets.
type Listener struct {
	Name     string `json:"name"`
	Network  string `json:"network"`
	Addr     string `json:"addr"`
	Text     string `json:"text"`
	Bound    string `json:"bound"`
	UnixPath string `json:"unix_path"` // the socket file prefork created and removes; "" none
	FD       int    `json:"fd"`
}

// Slot is one worker slot.
type Slot struct {
	Index     int           `json:"index"`
	Failures  int           `json:"failures"`
	Restarts  int           `json:"restarts"`
	LastExit  int           `json:"last_exit"`
	Replaced  string        `json:"replaced"`
	Socks     []int         `json:"socks"`      // reuseport: its sockets (slot 0's are the listeners)
	RestartIn time.Duration `json:"restart_in"` // empty: its restart is due in this long
}

// Worker is one running worker process; it stays prefork's child.
type Worker struct {
	PID        int           `json:"pid"`
	Slot       int           `json:"slot"`
	Generation int           `json:"generation"`
	Ready      bool          `json:"ready"` // up; else starting
	Age        time.Duration `json:"age"`   // since it started
	WasReady   bool          `json:"was_ready"`
	Failed     bool          `json:"failed"`
	Why        string        `json:"why"`
	Status     string        `json:"status"`
	UpBy       string        `json:"up_by"`    // how it came up, as the status names it; "" not up
	SeenIn     uint8         `json:"seen_in"`  // where it was seen waiting (internal/listenwait's Way); 0 not seen
	PingAge    time.Duration `json:"ping_age"` // since its last WATCHDOG=1
	NotifyPath string        `json:"notify_path"`
	NotifyFD   int           `json:"notify_fd"`
}

// NotifyDir is the directory of the workers' notify sockets.
type NotifyDir struct {
	Path string `json:"path"`
	UID  int    `json:"uid"`
	GID  int    `json:"gid"`
	Seq  uint64 `json:"seq"`
}

// Socket is a listening unix socket of prefork's own.
type Socket struct {
	Path string `json:"path"`
	FD   int    `json:"fd"`
}

// Pending is one reaped exit (Exit) or one notification (Msg) of worker PID.
type Pending struct {
	PID    int               `json:"pid"`
	Exit   bool              `json:"exit,omitempty"`
	Status int               `json:"status,omitempty"`
	Msg    map[string]string `json:"msg,omitempty"`
}

// FDs lists every descriptor the state names, the ones the exec keeps.
func (st *State) FDs() []int {
	fds := []int{st.ExeFD}
	for _, l := range st.Listeners {
		fds = append(fds, l.FD)
	}
	for _, sl := range st.Slots {
		fds = append(fds, sl.Socks...)
	}
	for _, w := range st.Procs {
		fds = append(fds, w.NotifyFD)
	}
	if st.Control != nil {
		fds = append(fds, st.Control.FD)
	}
	if st.Client >= 0 {
		fds = append(fds, st.Client)
	}
	out := fds[:0]
	for _, fd := range fds {
		if fd >= 0 {
			out = append(out, fd)
		}
	}
	return out
}

// FormatError is a state this binary does not read.
type FormatError struct{ Got int }

func (e *FormatError) Error() string {
	return fmt.Sprintf("state format %d; this prefork reads formats %d to %d", e.Got, MinVersion, Version)
}

// Encode is the state as written: JSON, the version first.
func Encode(st *State) []byte {
	st.Version = Version
	b, _ := json.Marshal(st)
	return b
}

// Decode reads a state, refusing a format this binary does not read.
func Decode(b []byte) (*State, error) {
	var v struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("unreadable state: %w", err)
	}
	if v.Version < MinVersion || v.Version > Version {
		return nil, &FormatError{v.Version}
	}
	st := &State{Client: -1, ExeFD: -1}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("unreadable state (format %d): %w", v.Version, err)
	}
	return st, nil
}

// Write puts the state in a new descriptor, at offset 0; it is close-on-exec
// until Keep.
func Write(st *State) (int, error) {
	fd, err := stateFile()
	if err != nil {
		return -1, err
	}
	for b := Encode(st); len(b) > 0; {
		n, err := syscall.Write(fd, b)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			syscall.Close(fd)
			return -1, os.NewSyscallError("write", err)
		}
		b = b[n:]
	}
	if _, err := syscall.Seek(fd, 0, io.SeekStart); err != nil {
		syscall.Close(fd)
		return -1, os.NewSyscallError("lseek", err)
	}
	return fd, nil
}

// EnvValue is StateEnv's value: the state's descriptor, and the descriptor of
// the binary that wrote it (for the way back, even when the state cannot be
// read).
func EnvValue(fd, exeFD int) string { return strconv.Itoa(fd) + ":" + strconv.Itoa(exeFD) }

// Inherited reads StateEnv: ok is false when it is not set. The variable is
// removed: no worker sees it.
func Inherited() (fd, exeFD int, ok bool, err error) {
	v, set := os.LookupEnv(StateEnv)
	if !set {
		return -1, -1, false, nil
	}
	os.Unsetenv(StateEnv)
	a, b, _ := strings.Cut(v, ":")
	fd, err1 := strconv.Atoi(a)
	exeFD, err2 := strconv.Atoi(b)
	if err1 != nil || err2 != nil || fd < 0 || exeFD < 0 {
		return -1, -1, true, fmt.Errorf("%s=%q does not name two descriptors", StateEnv, v)
	}
	return fd, exeFD, true, nil
}

// Clean drops this package's variables from an environment.
func Clean(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if k != StateEnv && k != RollbackEnv && k != CheckEnv {
			out = append(out, kv)
		}
	}
	return out
}

// Read reads the whole state from fd, from offset 0, and leaves fd open (and
// at offset 0) for a way back.
func Read(fd int) ([]byte, error) {
	if _, err := syscall.Seek(fd, 0, io.SeekStart); err != nil {
		return nil, os.NewSyscallError("lseek", err)
	}
	var out bytes.Buffer
	buf := make([]byte, 64<<10)
	for {
		n, err := syscall.Read(fd, buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, os.NewSyscallError("read", err)
		}
		if n == 0 {
			break
		}
		out.Write(buf[:n])
	}
	if _, err := syscall.Seek(fd, 0, io.SeekStart); err != nil {
		return nil, os.NewSyscallError("lseek", err)
	}
	return out.Bytes(), nil
}

// CheckLine is what a binary answers the check with: the formats it reads
// and its version.
func CheckLine(version string) string {
	return fmt.Sprintf("%s %d %d %s\n", checkTag, MinVersion, Version, version)
}

// Answer is a binary's answer to the check.
type Answer struct {
	Min, Max int
	Version  string
}

// ParseCheck reads what a binary printed in check mode.
func ParseCheck(out []byte) (Answer, error) {
	line, _, _ := strings.Cut(string(out), "\n")
	f := strings.Fields(line)
	if len(f) < 3 || f[0] != checkTag {
		return Answer{}, errors.New("not a prefork that can take over: it does not answer the upgrade check")
	}
	lo, err1 := strconv.Atoi(f[1])
	hi, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil || lo > hi {
		return Answer{}, fmt.Errorf("unreadable answer to the upgrade check: %q", line)
	}
	return Answer{lo, hi, strings.Join(f[3:], " ")}, nil
}

// Reads says whether the answering binary reads the state this one writes.
func (a Answer) Reads() error {
	if Version < a.Min || Version > a.Max {
		return fmt.Errorf("%s reads state formats %d to %d; this prefork writes format %d", a.Version, a.Min, a.Max, Version)
	}
	return nil
}
