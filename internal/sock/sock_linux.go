// This file holds the Linux side of bind.go: socket creation with
// SOCK_CLOEXEC, the somaxconn limit, and SO_REUSEPORT balancing.
package sock

import (
	"os"
	"strconv"
	"strings"
	"syscall"
)

// maxUnixPath is the size of sockaddr_un's sun_path.
const maxUnixPath = 108

// soReusePort is SO_REUSEPORT, which the frozen syscall package lacks on Linux
// (15 in asm-generic, so on amd64 and arm64).
const soReusePort = 0xf

// abstractUnixSockets: "unix:@name" is a Linux abstract socket, with no file.
const abstractUnixSockets = true

// sysSocket makes a blocking, close-on-exec socket atomically.
func sysSocket(family, typ int) (int, error) {
	fd, err := syscall.Socket(family, typ|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	return fd, nil
}

// somaxconn returns the system maximum listen backlog, from
// /proc/sys/net/core/somaxconn (syscall.SOMAXCONN if unreadable).
func somaxconn() int {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		return syscall.SOMAXCONN
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n <= 0 {
		return syscall.SOMAXCONN
	}
	return n
}

// reuseportAvailable reports whether the kernel spreads connections across
// SO_REUSEPORT sockets: Linux does.
func reuseportAvailable() error { return nil }
