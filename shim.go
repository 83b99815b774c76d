//go:build linux || darwin

// This file holds the exec shim. Go cannot run code between fork and exec, so
// prefork starts every worker as a re-execution of its own binary that sets
// LISTEN_PID to its own pid, drops privileges if --user asks, empties the signal
// mask, and then execs the command in place, keeping the pid that LISTEN_PID
// names. It also resolves --user USER[:GROUP] into the shim's credentials and
// keeps prefork's own descriptors out of workers.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/user"
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

// --user USER[:GROUP], resolved for the shim, and prefork's own descriptors
// kept out of workers.

// lookupUser returns the shim's credential string "uid:gid:groups" for --user,
// with the user's supplementary groups, and the uid and gid.
func lookupUser(spec string) (cred string, uid, gid int, err error) {
	name, group, hasGroup := strings.Cut(spec, ":")
	u, err := user.Lookup(name)
	if err != nil {
		if u, err = user.LookupId(name); err != nil {
			n, nerr := strconv.Atoi(name)
			if nerr != nil || n < 0 || n >= 1<<31 {
				return "", 0, 0, fmt.Errorf("no such user")
			}
			// A uid with no account, as container images use them (docker
			// --user, systemd's User=): its own number as group, no others.
			u = &user.User{Uid: name, Gid: name}
		}
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	if hasGroup {
		g, err := user.LookupGroup(group)
		if err != nil {
			if g, err = user.LookupGroupId(group); err != nil {
				return "", 0, 0, fmt.Errorf("no such group %q", group)
			}
		}
		gid, _ = strconv.Atoi(g.Gid)
	}
	// With USER:GROUP, GROUP replaces the user's login group, which GroupIds
	// always lists, as runuser -u USER -g GROUP does; the other groups stay.
	groups := []string{strconv.Itoa(gid)}
	if ids, err := u.GroupIds(); err == nil && u.Username != "" {
		for _, id := range ids {
			if id != strconv.Itoa(gid) && !(hasGroup && id == u.Gid) {
				groups = append(groups, id)
			}
		}
	}
	if euid := os.Geteuid(); euid != 0 && euid != uid {
		return "", 0, 0, errors.New("switching users needs root")
	}
	return fmt.Sprintf("%d:%d:%s", uid, gid, strings.Join(groups, ",")), uid, gid, nil
}

// setCloseOnExecAll marks every descriptor above 2 close-on-exec, so that what
// prefork inherited from its parent never reaches a worker; workers get exactly
// the descriptors prefork passes on purpose.
func setCloseOnExecAll() {
	ents, err := os.ReadDir("/dev/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}
