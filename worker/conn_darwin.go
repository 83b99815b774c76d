// This file holds what Conn does in a macOS-specific way.
package worker

import (
	"io"
	"syscall"
)

// Not in package syscall for darwin; from <netinet/tcp.h>.
const (
	tcpKeepIntvl = 0x101
	tcpKeepCnt   = 0x102
)

func setNonblock(fd int) error { return syscall.SetNonblock(fd, true) }

// setTCPDefaults gives a TCP connection what net's Accept gives one:
// TCP_NODELAY, keep-alive probes after 15 s idle, every 15 s, 9 of them.
// Failures are ignored, as net does.
func setTCPDefaults(fd int) {
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1)
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPALIVE, 15)
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, tcpKeepIntvl, 15)
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, tcpKeepCnt, 9)
}

// sendFile is not used on macOS: ReadFrom copies.
func (c *Conn) sendFile(io.Reader) (int64, bool, error) { return 0, false, nil }
