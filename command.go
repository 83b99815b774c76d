//go:build linux || darwin

// This file holds the command prefork runs and where: the working directory,
// re-entered by the path prefork was started in at each reload (so a deploy
// that swaps a `current` symlink or directory is picked up), the command
// resolved again there, the checks that find a command that cannot start
// before any worker does, and the exec errors the shim reports.
package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// workdir is where workers start.
type workdir struct {
	path string // the directory by the path prefork was started in: $PWD when it names it
	dir  string // path with symlinks resolved at start or at the last reload
}

// newWorkdir takes the working directory by the path prefork was started in:
// $PWD, as the shell keeps it (through symlinks), when it names the same
// directory as ".", as unicorn does; else the kernel's name for it.
func newWorkdir() (workdir, error) {
	dot, err := os.Stat(".")
	if err != nil {
		return workdir{}, fmt.Errorf("working directory: %w", err)
	}
	if pwd := os.Getenv("PWD"); filepath.IsAbs(pwd) {
		if fi, err := os.Stat(pwd); err == nil && os.SameFile(fi, dot) {
			return workdir{path: filepath.Clean(pwd)}, nil
		}
	}
	wd, err := syscall.Getwd()
	if err != nil {
		return workdir{}, fmt.Errorf("working directory: %w", os.NewSyscallError("getcwd", err))
	}
	return workdir{path: wd}, nil
}

// resolve enters the working directory again by its path and finds the
// command there: at start and at each reload. It changes nothing on an error,
// which carries the exit status of the README's "Exit status" (126, 127).
func (s *supervisor) resolve() (int, error) {
	dir, err := filepath.EvalSymlinks(s.wd.path)
	if err != nil {
		if relative := strings.Contains(s.argv[0], "/") && !filepath.IsAbs(s.argv[0]); relative && !s.c.demo {
			return exitNotFound, fmt.Errorf("working directory %s: %w", s.wd.path, unwrapPath(err))
		}
		// Gone, but the command does not live there: workers start where
		// prefork is, as they would without this (the shim says so).
		dir = s.wd.path
	}
	path := s.shim // the demo worker is prefork's own binary
	if !s.c.demo {
		var code int
		if path, code, err = resolveCommand(s.argv[0], dir); err != nil {
			return code, err
		}
	}
	s.wd.dir, s.path = dir, path
	return 0, nil
}

// resolveCommand finds the command as the workers will exec it from dir: a
// name with a slash relative to dir, a bare name on $PATH. It returns an error
// with 127 when it or its #! interpreter does not exist, 126 when it cannot be
// executed.
func resolveCommand(name, dir string) (string, int, error) {
	var path string
	if strings.Contains(name, "/") {
		path = name
		if !filepath.IsAbs(path) {
			path = filepath.Join(dir, name)
		}
	} else {
		p, err := exec.LookPath(name)
		if errors.Is(err, exec.ErrDot) {
			err = nil
		}
		if err != nil {
			if p := onPathNotExecutable(name, dir); p != "" {
				return "", exitNoExec, fmt.Errorf("%s: permission denied (%s is not executable)", name, p)
			}
			return "", exitNotFound, fmt.Errorf("%s: command not found", name)
		}
		if path = p; !filepath.IsAbs(path) { // from a relative $PATH entry
			path = filepath.Join(dir, p)
		}
	}
	if code, err := checkExecutable(path); err != nil {
		return "", code, fmt.Errorf("%s: %w", name, err)
	}
	return path, 0, nil
}

// onPathNotExecutable is the first file named name on $PATH, when the search
// found no executable one: execvp(3) and the shells then fail with EACCES and
// exit 126, not 127, and so does prefork.
func onPathNotExecutable(name, dir string) string {
	for _, d := range filepath.SplitList(os.Getenv("PATH")) {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, name)
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p
		}
	}
	return ""
}

// checkExecutable finds what execve would refuse, without running anything:
// a missing file or #! interpreter (127), a directory, a file without the x
// bit, a file or interpreter on a filesystem mounted noexec, or a file in no
// format the kernel runs (126).
func checkExecutable(path string) (int, error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return exitNotFound, errors.New("command not found")
	case err != nil:
		return exitNoExec, unwrapPath(err)
	case fi.IsDir():
		return exitNoExec, errors.New("is a directory")
	case fi.Mode()&0o111 == 0:
		return exitNoExec, errors.New("permission denied (not executable)")
	case noexecMount(path):
		return exitNoExec, errors.New("permission denied (its filesystem is mounted noexec)")
	}
	head := readHead(path)
	if head == nil {
		return 0, nil // unreadable but executable (mode 0711): execve will tell
	}
	if interp, ok := interpreter(head); ok {
		if !filepath.IsAbs(interp) {
			return 0, nil // relative to the worker's directory: execve will tell
		}
		ifi, err := os.Stat(interp)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return exitNotFound, fmt.Errorf("interpreter %s not found", interp)
		case err == nil && (ifi.IsDir() || ifi.Mode()&0o111 == 0):
			return exitNoExec, fmt.Errorf("interpreter %s is not executable", interp)
		case err == nil && noexecMount(interp):
			return exitNoExec, fmt.Errorf("interpreter %s: permission denied (its filesystem is mounted noexec)", interp)
		}
		return 0, nil
	}
	if !execFormatKnown(head) {
		return exitNoExec, errors.New("exec format error (not a binary this system runs, and no #! line)")
	}
	return 0, nil
}

// readHead reads the start of a file, where #! and binary magic numbers are.
func readHead(path string) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	b := make([]byte, 256)
	n, _ := io.ReadFull(f, b)
	return b[:n]
}

// interpreter reads the interpreter of a #! line.
func interpreter(head []byte) (string, bool) {
	if len(head) < 2 || head[0] != '#' || head[1] != '!' {
		return "", false
	}
	line, _, _ := strings.Cut(string(head[2:]), "\n")
	fields := strings.Fields(line)
	if len(fields) == 0 {
		return "", true
	}
	return fields[0], true
}

// explainExec turns the shim's failed execve into an exit status and a message
// that names the cause: a #! interpreter that does not exist shows as ENOENT on
// a file that exists.
func explainExec(path string, err error) (int, string) {
	switch {
	case errors.Is(err, syscall.ENOENT):
		if _, serr := os.Stat(path); serr != nil {
			return exitNotFound, fmt.Sprintf("%s: command not found", path)
		}
		if interp, ok := interpreter(readHead(path)); ok {
			return exitNotFound, fmt.Sprintf("%s: interpreter %s not found", path, interp)
		}
		return exitNotFound, fmt.Sprintf("%s: its program interpreter (dynamic loader) not found", path)
	case errors.Is(err, syscall.ENOTDIR):
		return exitNotFound, fmt.Sprintf("%s: command not found", path)
	case errors.Is(err, syscall.ENOEXEC):
		return exitNoExec, fmt.Sprintf("%s: exec format error (not a binary this system runs, and no #! line)", path)
	case errors.Is(err, syscall.EACCES):
		return exitNoExec, fmt.Sprintf("%s: permission denied", path)
	}
	return exitNoExec, fmt.Sprintf("%s: %v", path, err)
}

// unwrapPath drops the operation and path a *fs.PathError repeats.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// execErrorPath is where the shim leaves the reason it could not start the
// command: beside the worker's notify socket, in prefork's private directory,
// read when the worker's exit is handled (a datagram could still be unread
// when the exit is).
func execErrorPath(notifySocket string) string { return notifySocket + ".exec" }

// reportExecError is the shim's side: status and message for prefork; it
// reports whether they were left there.
func reportExecError(code int, msg string) bool {
	ns := os.Getenv("NOTIFY_SOCKET")
	return filepath.IsAbs(ns) && os.WriteFile(execErrorPath(ns), []byte(fmt.Sprintf("%d %s", code, msg)), 0o600) == nil
}

// execError is prefork's side: what the shim of this worker reported, if it
// could not start the command.
func (n *notifySocket) execError() string {
	if n == nil {
		return ""
	}
	b, err := os.ReadFile(execErrorPath(n.path))
	if err != nil {
		return ""
	}
	_, msg, _ := strings.Cut(string(b), " ")
	return msg
}

// execFailed handles a worker whose shim could not start the command. On the
// first start (no worker was ever up) prefork gives up at once with the
// shim's status: every worker would fail alike. During a reload the reload is
// abandoned (slots.go drops the new worker) and the old workers keep serving;
// later restarts count as failed starts.
func (s *supervisor) execFailed(w *worker, status int, msg string) {
	s.log.Error("cannot start the command: "+msg, "slot", w.slot.index, "pid", w.pid, "status", status)
	if !s.upOnce && !s.stopping {
		s.exitCode = status
		s.beginStop(0)
	}
}

// colon is ": msg", or nothing when msg is empty.
func colon(msg string) string {
	if msg == "" {
		return ""
	}
	return ": " + msg
}
