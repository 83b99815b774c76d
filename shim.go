//go:build linux || darwin

// This file holds the exec shim. Go cannot run code between fork and exec, so
// prefork starts every worker as a re-execution of its own binary that sets
// LISTEN_PID to its own pid, drops privileges if --user asks, empties the signal
// mask, and then execs the command in place, keeping the pid that LISTEN_PID
// names.
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
)

const (
	shimEnv      = "PREFORK_SHIM_EXEC" // marks the shim role; never reaches the command
	shimCredEnv  = "PREFORK_SHIM_CRED" // uid:gid:group,group,...
	shimPPIDEnv  = "PREFORK_SHIM_PPID" // prefork's pid, to detect its death during the shim
	shimDirEnv   = "PREFORK_SHIM_DIR"  // the directory the command starts in (command.go)
	shimArgv0    = "prefork-exec"
	shimExitExec = 127
)

func init() {
	// The parent-death signal belongs to the thread: keep the shim's main
	// goroutine on the thread that was forked, which is the one that execs.
	if os.Getenv(shimEnv) != "" {
		runtime.LockOSThread()
	}
}

// shimArgs is the argv of the shim for a command: the resolved path, then the
// command's own argv.
func shimArgs(path string, argv []string) []string {
	return append([]string{shimArgv0, path}, argv...)
}

// runShim is the whole life of the shim: args are path, argv0, args....
func runShim(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "prefork: exec shim: missing command")
		return shimExitExec
	}
	cred := os.Getenv(shimCredEnv)
	ppid := os.Getenv(shimPPIDEnv)
	dir := os.Getenv(shimDirEnv)
	if dir != "" {
		// The directory prefork resolved at start or at the last reload: a
		// deploy that swapped it since applies from the next reload on. One
		// that is gone leaves the worker where prefork is, as before: a
		// command that lived there is not found, and the shim says so.
		if err := os.Chdir(dir); err != nil {
			fmt.Fprintf(os.Stderr, "prefork: exec shim: warning: cannot enter the working directory %s: %v\n", dir, unwrapPath(err))
			dir = ""
		}
	}
	env := make([]string, 0, len(os.Environ()))
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, shimEnv+"=") || strings.HasPrefix(kv, shimCredEnv+"=") ||
			strings.HasPrefix(kv, shimPPIDEnv+"=") || strings.HasPrefix(kv, shimDirEnv+"=") ||
			strings.HasPrefix(kv, "LISTEN_PID=") || dir != "" && strings.HasPrefix(kv, "PWD=") {
			continue
		}
		env = append(env, kv)
	}
	// Every worker, in every mode (README: What a worker gets): without LISTEN_FDS (rr mode, Node
	// workers) libsystemd and its peers find no sockets all the same.
	env = append(env, "LISTEN_PID="+strconv.Itoa(os.Getpid()))
	if dir != "" {
		env = append(env, "PWD="+dir)
	}
	fail := func(code int, msg string) int {
		// prefork logs what the shim reports, in its own --log-format; the shim
		// speaks itself only when it cannot report.
		if !reportExecError(code, msg) {
			fmt.Fprintf(os.Stderr, "prefork: exec shim: %s\n", msg)
		}
		return code
	}
	if cred != "" {
		if err := dropPrivileges(cred); err != nil {
			return fail(shimExitExec, err.Error())
		}
		if err := setPdeathsig(); err != nil {
			fmt.Fprintf(os.Stderr, "prefork: exec shim: %v\n", err)
		}
		if hasPdeathsig && strconv.Itoa(os.Getppid()) != ppid {
			return shimExitExec // prefork died before the signal was re-armed
		}
	}
	if err := resetSignalMask(); err != nil {
		fmt.Fprintf(os.Stderr, "prefork: exec shim: %v\n", err)
	}
	err := syscall.Exec(args[0], args[1:], env)
	return fail(explainExec(args[0], err))
}

// dropPrivileges sets groups, gid and uid from "uid:gid:g1,g2".
func dropPrivileges(cred string) error {
	parts := strings.SplitN(cred, ":", 3)
	if len(parts) != 3 {
		return fmt.Errorf("bad credentials %q", cred)
	}
	uid, err1 := strconv.Atoi(parts[0])
	gid, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return fmt.Errorf("bad credentials %q", cred)
	}
	var groups []int
	for _, g := range strings.Split(parts[2], ",") {
		if n, err := strconv.Atoi(g); err == nil {
			groups = append(groups, n)
		}
	}
	if err := syscall.Setgroups(groups); err != nil {
		return os.NewSyscallError("setgroups", err)
	}
	if err := syscall.Setgid(gid); err != nil {
		return os.NewSyscallError("setgid", err)
	}
	if err := syscall.Setuid(uid); err != nil {
		return os.NewSyscallError("setuid", err)
	}
	return nil
}
