// This file holds prefork's macOS system calls, one section per concern, each
// the counterpart of a section of sys_linux.go.
package main

import (
	"encoding/binary"
	"net"
	"os"
	"runtime"
	"syscall"
	"time"
)

// Process handling. macOS has no parent-death signal and no child-subreaper
// bit: the man page says what that means.

const (
	sigPWR             = syscall.Signal(0)
	reuseportSupported = false
	hasPdeathsig       = false
)

// workerProcAttr puts the worker in its own process group.
func workerProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// setSubreaper is a no-op: only pid 1 inherits orphans on macOS.
func setSubreaper() error { return nil }

func setPdeathsig() error { return nil }

func selfExe() (string, error) { return os.Executable() }

var processStart = time.Now()

// monotonicNow approximates CLOCK_MONOTONIC (macOS has no systemd to read it).
func monotonicNow() time.Duration { return time.Since(processStart) }

// ownChildren: macOS has no subreaper, so no descendant of a worker is ever
// prefork's child.
func ownChildren() []int { return nil }

// The shim (shim.go): the signal mask a worker starts with.

// resetSignalMask does nothing on macOS, where the syscall package has no
// pthread_sigmask: a worker starts with the signal mask prefork was started
// with (empty, unless whatever started prefork blocked signals).
func resetSignalMask() error { return nil }

// Commands (command.go): which files execve runs.

// execFormatKnown reports whether execve may run a file that starts with head
// and has no #! line: a Mach-O binary, thin or universal, of either byte order.
func execFormatKnown(head []byte) bool {
	if len(head) < 4 {
		return false
	}
	switch binary.BigEndian.Uint32(head) {
	case 0xfeedface, 0xfeedfacf, 0xcefaedfe, 0xcffaedfe, 0xcafebabe, 0xbebafeca:
		return true
	}
	return false
}

// noexecMount reports whether path lies on a filesystem mounted noexec
// (statfs f_flags MNT_NOEXEC, 0x4), where execve fails with EACCES whatever
// the file's mode.
func noexecMount(path string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(path, &st) == nil && st.Flags&0x4 != 0
}

// Notify sockets (notify.go): a datagram on a unix socket carries no
// credentials on macOS (LOCAL_PEERPID needs a connected stream socket), so
// prefork cannot tell who sent it; only the private directory keeps others out.

// notifyChecksSender: macOS cannot check who sent a datagram.
const notifyChecksSender = false

// notifyOOB is zero: with no room for control data, the kernel discards
// descriptors a sender passes along.
var notifyOOB = 0

func passCred(*net.UnixConn) error { return nil }

func notifySender([]byte) int { return 0 }

// The pidfile check.

// pidStarted cannot tell on macOS without libproc: a live pid in a pidfile
// counts as running.
func pidStarted(int) (time.Time, bool) { return time.Time{}, false }

// The CPU count for -n auto.

// autoWorkers returns the number of CPUs this process may use: macOS has neither
// CPU affinity masks nor cgroups, so it is the number of logical CPUs.
func autoWorkers() int { return runtime.NumCPU() }
