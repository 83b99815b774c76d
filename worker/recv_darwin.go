// This file holds the macOS side of the rr handoff channel: SOCK_DGRAM, and
// received connections made close-on-exec under syscall.ForkLock.
package worker

import "syscall"

// handoffType is the socket type of fd 3 in rr mode.
const handoffType = syscall.SOCK_DGRAM

// errNoHandoff is never returned: macOS has the handoff channel.
var errNoHandoff error

// recvNoWait reads one message without blocking; received descriptors are made
// close-on-exec before any fork can see them.
func recvNoWait(fd int, p, oob []byte) (n, oobn, flags int, err error) {
	for {
		syscall.ForkLock.RLock()
		n, oobn, flags, _, err = syscall.Recvmsg(fd, p, oob, syscall.MSG_DONTWAIT)
		if err == nil && oobn > 0 {
			for _, fd := range rights(oob[:oobn]) {
				syscall.CloseOnExec(fd)
			}
		}
		syscall.ForkLock.RUnlock()
		if err != syscall.EINTR {
			return n, oobn, flags, err
		}
	}
}
