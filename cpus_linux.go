// This file holds the CPU count for -n auto on Linux: the CPUs in this process's
// affinity mask, capped by the cgroup (v2 or v1) CPU quota.
package main

import (
	"math/bits"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"
)

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
