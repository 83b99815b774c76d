// This file holds the macOS constants of the Node channel.
package main

import "syscall"

// fionbio is the ioctl that sets or clears O_NONBLOCK in one call (_IOW('f',
// 126, int) in <sys/filio.h>; package syscall does not export it for darwin).
const fionbio = 0x8004667e

// acceptConnNonblock is acceptConn for connections that go to Node workers:
// they stay non-blocking, as BSD accept makes them from the listener.
func acceptConnNonblock(lfd int) (int, error) {
	for {
		syscall.ForkLock.RLock()
		fd, _, err := syscall.Accept(lfd)
		if err == nil {
			syscall.CloseOnExec(fd)
		}
		syscall.ForkLock.RUnlock()
		if err != syscall.EINTR {
			if err != nil {
				return -1, err
			}
			return fd, syscall.SetNonblock(fd, true)
		}
	}
}
