// This file holds prefork's Linux system calls and /proc readings, one section
// per concern; sys_darwin.go holds the macOS side of each.
package main

import (
	"bytes"
	"math/bits"
	"net"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// Process handling: the parent-death signal, the child-subreaper bit, and the
// path prefork re-executes for its shim.

const (
	sigPWR             = syscall.SIGPWR
	reuseportSupported = true
	hasPdeathsig       = true
)

// workerProcAttr puts the worker in its own process group and asks the kernel to
// SIGKILL it if prefork dies (the fork happens on a locked thread that never exits).
func workerProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// setSubreaper makes orphaned descendants of workers prefork's children, so that
// prefork reaps them and a stop can wait for them, as pid 1 would.
func setSubreaper() error {
	const prSetChildSubreaper = 36
	_, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
	if e != 0 {
		return os.NewSyscallError("prctl", e)
	}
	return nil
}

// setPdeathsig re-arms the parent-death signal in the shim after a credential
// change cleared it; the caller must be locked to its OS thread.
func setPdeathsig() error {
	_, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0)
	if e != 0 {
		return os.NewSyscallError("prctl", e)
	}
	return nil
}

// selfExe is prefork's own binary, even if it was replaced on disk since.
func selfExe() (string, error) { return "/proc/self/exe", nil }

// monotonicNow reads CLOCK_MONOTONIC.
func monotonicNow() time.Duration {
	var ts syscall.Timespec
	syscall.Syscall(syscall.SYS_CLOCK_GETTIME, 1, uintptr(unsafe.Pointer(&ts)), 0)
	return time.Duration(ts.Nano())
}

// ownChildren lists prefork's child processes as the kernel keeps them
// (/proc/self/task/*/children): after the last worker, descendants that left
// their worker's process group and were reparented to prefork, the subreaper.
func ownChildren() []int {
	files, _ := filepath.Glob("/proc/self/task/*/children")
	var pids []int
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, w := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(w); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// The shim (shim.go): the signal mask a worker starts with.

// resetSignalMask empties the calling thread's signal mask, which execve hands
// to the command: a mask prefork inherited from whatever started it (signals
// blocked there stay blocked in every thread of a Go program) must not keep a
// worker from being stopped. The shim's main goroutine is locked to its thread.
func resetSignalMask() error {
	const sigSetmask = 2
	var empty uint64
	_, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, sigSetmask, uintptr(unsafe.Pointer(&empty)), 0, unsafe.Sizeof(empty), 0, 0)
	if e != 0 {
		return os.NewSyscallError("rt_sigprocmask", e)
	}
	return nil
}

// Commands (command.go): which files execve runs.

// execFormatKnown reports whether execve may run a file that starts with head
// and has no #! line: an ELF binary, or anything while binfmt_misc has formats
// registered (prefork does not match them).
func execFormatKnown(head []byte) bool {
	if bytes.HasPrefix(head, []byte("\x7fELF")) {
		return true
	}
	names, _ := os.ReadDir("/proc/sys/fs/binfmt_misc")
	for _, e := range names {
		if e.Name() != "register" && e.Name() != "status" {
			return true
		}
	}
	return false
}

// noexecMount reports whether path lies on a filesystem mounted noexec
// (statfs f_flags ST_NOEXEC, 0x8), where execve fails with EACCES whatever
// the file's mode.
func noexecMount(path string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(path, &st) == nil && st.Flags&0x8 != 0
}

// Notify sockets (notify.go): with SO_PASSCRED set on a notify socket, the
// kernel attaches the sender's pid to every datagram (SCM_CREDENTIALS), so
// prefork can tell who sent it.

// notifyChecksSender: on Linux, only the worker and its process group count.
const notifyChecksSender = true

// notifyOOB is room for the credentials only: descriptors a sender passes along
// do not fit, and the kernel closes them instead of installing them in prefork.
var notifyOOB = syscall.CmsgSpace(syscall.SizeofUcred)

// passCred makes the kernel attach the sender's credentials to each datagram.
func passCred(c *net.UnixConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1)
	}); err != nil {
		return err
	}
	return os.NewSyscallError("setsockopt SO_PASSCRED", serr)
}

// notifySender reads the sender's pid from a datagram's control data; 0 when
// the datagram carries none (or the sender lives in a pid namespace prefork
// cannot see into).
func notifySender(oob []byte) int {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return 0
	}
	for i := range msgs {
		if msgs[i].Header.Level == syscall.SOL_SOCKET && msgs[i].Header.Type == syscall.SCM_CREDENTIALS {
			if cred, err := syscall.ParseUnixCredentials(&msgs[i]); err == nil {
				return int(cred.Pid)
			}
		}
	}
	return 0
}

// The pidfile check: when a process started, so that a pid reused since the
// pidfile was written is not taken for prefork.

// pidStarted returns when process pid started, from /proc (the start time in
// clock ticks after boot, USER_HZ = 100 on every architecture Go supports,
// and the boot time); ok is false when it cannot tell.
func pidStarted(pid int) (t time.Time, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return t, false
	}
	// The command name, in parentheses, may hold spaces: fields count after it.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return t, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return t, false
	}
	ticks, err := strconv.ParseInt(f[19], 10, 64) // field 22: starttime
	if err != nil {
		return t, false
	}
	st, err := os.ReadFile("/proc/stat")
	if err != nil {
		return t, false
	}
	for _, line := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			boot, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return t, false
			}
			return time.Unix(boot, 0).Add(time.Duration(ticks) * 10 * time.Millisecond), true
		}
	}
	return t, false
}

// The CPU count for -n auto: the CPUs in this process's affinity mask, capped by
// the cgroup (v2 or v1) CPU quota.

// autoWorkers returns the number of CPUs this process may really use: the
// smaller of its affinity mask's CPU count and its cgroup CPU quota rounded up;
// at least 1. It does not use runtime.GOMAXPROCS, which honours the GOMAXPROCS
// variable and never goes below 2 for a quota.
func autoWorkers() int {
	n := affinityCPUs()
	procCgroup, _ := os.ReadFile("/proc/self/cgroup")
	if q := cgroupCPUs("/sys/fs/cgroup", string(procCgroup)); q > 0 && q < n {
		n = q
	}
	return max(n, 1)
}

// affinityCPUs counts the CPUs in this process's sched_getaffinity mask.
func affinityCPUs() int {
	for size := 128; size <= 1<<16; size *= 2 { // bytes of mask: 1024 CPUs and up
		buf := make([]byte, size)
		r, _, errno := syscall.RawSyscall(syscall.SYS_SCHED_GETAFFINITY, 0, uintptr(size), uintptr(unsafe.Pointer(&buf[0])))
		if errno == syscall.EINVAL { // the kernel's mask is larger than buf
			continue
		}
		if errno != 0 {
			break
		}
		n := 0
		for _, b := range buf[:r] {
			n += bits.OnesCount8(b)
		}
		return n
	}
	return runtime.NumCPU()
}

// cgroupCPUs returns the tightest CPU quota, in whole CPUs rounded up, on the
// process's cgroup and its ancestors, reading files under root (normally
// /sys/fs/cgroup) for the paths in procCgroup (the text of /proc/self/cgroup);
// 0 means no quota. It tries the cgroup v2 layout (root or root/unified, cpu.max)
// and the v1 one (root/cpu or root/cpu,cpuacct, cpu.cfs_quota_us).
func cgroupCPUs(root, procCgroup string) int {
	v2, v1 := parseProcCgroup(procCgroup)
	best := 0
	take := func(n int) {
		if n > 0 && (best == 0 || n < best) {
			best = n
		}
	}
	read := func(dir, p, file string) string {
		b, err := os.ReadFile(filepath.Join(dir, p, file))
		if err != nil {
			return ""
		}
		return string(b)
	}
	// Walking up to the root also finds the limit when /proc/self/cgroup names a
	// path outside this mount (a container whose cgroup is the mount's root).
	walk := func(p string, visit func(p string)) {
		for p = path.Clean("/" + p); ; p = path.Dir(p) {
			visit(p)
			if p == "/" {
				return
			}
		}
	}
	if v2 != "" {
		for _, dir := range []string{root, filepath.Join(root, "unified")} {
			walk(v2, func(p string) { take(parseCPUMax(read(dir, p, "cpu.max"))) })
		}
	}
	if v1 != "" {
		for _, dir := range []string{filepath.Join(root, "cpu"), filepath.Join(root, "cpu,cpuacct"), filepath.Join(root, "cpuacct,cpu")} {
			walk(v1, func(p string) {
				take(parseCFS(read(dir, p, "cpu.cfs_quota_us"), read(dir, p, "cpu.cfs_period_us")))
			})
		}
	}
	return best
}

// parseProcCgroup reads /proc/self/cgroup text ("ID:CONTROLLERS:PATH" lines) and
// returns the cgroup v2 path (the "0::PATH" line) and the v1 path of the
// hierarchy holding the cpu controller; "" where absent.
func parseProcCgroup(text string) (v2, v1cpu string) {
	for _, line := range strings.Split(text, "\n") {
		id, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		controllers, p, ok := strings.Cut(rest, ":")
		if !ok || p == "" {
			continue
		}
		if id == "0" && controllers == "" {
			v2 = p
			continue
		}
		for _, c := range strings.Split(controllers, ",") {
			if c == "cpu" {
				v1cpu = p
			}
		}
	}
	return v2, v1cpu
}

// parseCPUMax parses a cgroup v2 cpu.max ("QUOTA PERIOD", QUOTA may be "max") and
// returns the CPUs it allows, rounded up; 0 when unlimited or unreadable.
func parseCPUMax(s string) int {
	f := strings.Fields(s)
	if len(f) == 0 || len(f) > 2 || f[0] == "max" {
		return 0
	}
	period := "100000" // the kernel's default when the file gives only a quota
	if len(f) == 2 {
		period = f[1]
	}
	return quotaCPUs(f[0], period)
}

// parseCFS parses cgroup v1 cpu.cfs_quota_us ("-1" is unlimited) and
// cpu.cfs_period_us and returns the CPUs they allow, rounded up; 0 when unlimited
// or unreadable.
func parseCFS(quota, period string) int {
	return quotaCPUs(strings.TrimSpace(quota), strings.TrimSpace(period))
}

func quotaCPUs(quota, period string) int {
	q, err1 := strconv.ParseInt(quota, 10, 64)
	p, err2 := strconv.ParseInt(period, 10, 64)
	if err1 != nil || err2 != nil || q <= 0 || p <= 0 {
		return 0
	}
	n := q / p
	if q%p != 0 {
		n++
	}
	return int(n)
}
