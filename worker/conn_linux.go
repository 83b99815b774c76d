// This file holds what Conn does in a Linux-specific way.
package worker

import "syscall"

// setNonblock makes a freshly accepted socket non-blocking with one fcntl: its
// other file status flags are all clear, so F_GETFL has nothing to keep.
func setNonblock(fd int) error {
	_, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_SETFL, syscall.O_NONBLOCK)
	if e != 0 {
		return e
	}
	return nil
}

// setTCPDefaults gives a TCP connection what net's Accept gives one:
// TCP_NODELAY, keep-alive probes after 15 s idle, every 15 s, 9 of them.
// Failures are ignored, as net does.
func setTCPDefaults(fd int) {
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1)
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, 15)
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, 15)
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, 9)
}
