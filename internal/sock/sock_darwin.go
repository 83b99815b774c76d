// This file holds the macOS side of bind.go: socket creation with
// close-on-exec set under syscall.ForkLock, the somaxconn limit, and the refusal
// of SO_REUSEPORT balancing.
package sock

import (
	"errors"
	"os"
	"syscall"
)

// maxUnixPath is the size of sockaddr_un's sun_path.
const maxUnixPath = 104

// soReusePort is SO_REUSEPORT.
const soReusePort = syscall.SO_REUSEPORT

// abstractUnixSockets: macOS has no abstract unix sockets; "@name" is a file.
const abstractUnixSockets = false

// sysSocket makes a blocking, close-on-exec socket; ForkLock keeps a concurrent
// fork from inheriting it before close-on-exec is set.
func sysSocket(family, typ int) (int, error) {
	syscall.ForkLock.RLock()
	fd, err := syscall.Socket(family, typ, 0)
	if err == nil {
		syscall.CloseOnExec(fd)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	return fd, nil
}

// somaxconn returns the system maximum listen backlog, from kern.ipc.somaxconn
// (128 if unreadable).
func somaxconn() int {
	n, err := syscall.SysctlUint32("kern.ipc.somaxconn")
	if err != nil || n == 0 {
		return 128
	}
	return int(n)
}

// reuseportAvailable reports whether the kernel spreads connections across
// SO_REUSEPORT sockets: the BSD kernel hands them all to one socket.
func reuseportAvailable() error {
	return errors.New("reuseport mode is not available on macOS: the BSD kernel does not balance connections across SO_REUSEPORT sockets; use --mode shared")
}

// SourceBalanceSupported: the BSD kernel has no program for a reuseport group.
const SourceBalanceSupported = false

// AttachSourceBalance is Linux's (source_linux.go); on macOS reuseport mode
// itself is refused.
func AttachSourceBalance(fd, n int) error {
	return errors.New("--balance source in reuseport mode needs Linux")
}
