//go:build unix && !linux && !darwin

// This file holds Conn's system-specific parts where rr mode does not run
// (newHandoff refuses it): enough to build.
package worker

import (
	"io"
	"syscall"
)

func setNonblock(fd int) error { return syscall.SetNonblock(fd, true) }

func setTCPDefaults(fd int) {
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1)
}

// sendFile is not used on this system: ReadFrom copies.
func (c *Conn) sendFile(io.Reader) (int64, bool, error) { return 0, false, nil }
