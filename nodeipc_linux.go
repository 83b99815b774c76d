// This file holds the Linux constants of the Node channel.
package main

import "syscall"

// fionbio is the ioctl that sets or clears O_NONBLOCK in one call (FIONBIO in
// <asm-generic/ioctls.h>, the same on amd64 and arm64; package syscall does not
// export it).
const fionbio = 0x5421

// acceptConnNonblock is acceptConn for connections that go to Node workers:
// non-blocking from the start (accept4 with SOCK_NONBLOCK), which saves the
// ioctl per connection.
func acceptConnNonblock(lfd int) (int, error) {
	for {
		r, _, e := syscall.Syscall6(syscall.SYS_ACCEPT4, uintptr(lfd), 0, 0, syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, 0, 0)
		switch e {
		case 0:
			return int(r), nil
		case syscall.EINTR:
			continue
		}
		return -1, e
	}
}
