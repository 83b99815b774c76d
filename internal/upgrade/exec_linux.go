// This file holds the Linux side of the exec: the state's descriptor (a
// file with no name), the running binary kept open for the way back, and the
// close-on-exec bits.
package upgrade

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"unsafe"
)

// Supported: the upgrade runs on Linux.
const Supported = true

// stateFile is a new file with no name (made in the temporary directory and
// removed at once), close-on-exec until Keep.
func stateFile() (int, error) {
	for i := 0; ; i++ {
		path := filepath.Join(os.TempDir(), fmt.Sprintf("prefork-upgrade.%d.%d", os.Getpid(), rand.Uint64()))
		fd, err := syscall.Open(path, syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL|syscall.O_CLOEXEC, 0o600)
		if err == syscall.EEXIST && i < 10 {
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("state file in %s: %w", os.TempDir(), err)
		}
		syscall.Unlink(path)
		return fd, nil
	}
}

// OpenSelf opens the binary this process runs (even if it was replaced on
// disk since), close-on-exec: the way back to this image.
func OpenSelf() (int, error) {
	fd, err := syscall.Open("/proc/self/exe", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("open /proc/self/exe", err)
	}
	return fd, nil
}

// FDPath is the path execve runs the binary open at fd by.
func FDPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// Keep clears close-on-exec on the descriptors, so that the exec keeps them.
func Keep(fds []int) error {
	for _, fd := range fds {
		if _, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_SETFD, 0); e != 0 {
			return os.NewSyscallError("fcntl F_SETFD fd "+strconv.Itoa(fd), e)
		}
	}
	return nil
}

// Release makes the descriptors close-on-exec again, after an exec that failed.
func Release(fds []int) {
	for _, fd := range fds {
		syscall.CloseOnExec(fd)
	}
}

// BlockSignals blocks sigs in the calling thread (which must be locked to
// it) and returns the mask it had; execve carries the mask and the signals
// pending into the new image.
func BlockSignals(sigs []syscall.Signal) (old uint64, err error) {
	var set uint64
	for _, s := range sigs {
		set |= 1 << (uint(s) - 1)
	}
	return sigprocmask(0, set) // 0: SIG_BLOCK
}

// SetMask sets the calling thread's signal mask.
func SetMask(mask uint64) { sigprocmask(2, mask) } // 2: SIG_SETMASK

func sigprocmask(how int, set uint64) (uint64, error) {
	var old uint64
	_, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, uintptr(how), uintptr(unsafe.Pointer(&set)),
		uintptr(unsafe.Pointer(&old)), unsafe.Sizeof(set), 0, 0)
	if e != 0 {
		return 0, os.NewSyscallError("rt_sigprocmask", e)
	}
	return old, nil
}

// PendingSignals is the set of signals pending for this process (bit N-1 for
// signal N), from /proc/self/status; 0 when it cannot be read.
func PendingSignals() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	var set uint64
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		if k == "SigPnd" || k == "ShdPnd" {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			set |= n
		}
	}
	return set
}
