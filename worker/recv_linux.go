// This file holds the Linux side of the rr handoff channel: SOCK_SEQPACKET, and
// receiving connections close-on-exec with MSG_CMSG_CLOEXEC.
package worker

import "syscall"

// handoffType is the socket type of fd 3 in rr mode.
const handoffType = syscall.SOCK_SEQPACKET

// errNoHandoff is never returned: Linux has the handoff channel.
var errNoHandoff error

// recvNoWait reads one message without blocking; received descriptors are
// close-on-exec from the start.
func recvNoWait(fd int, p, oob []byte) (n, oobn, flags int, err error) {
	for {
		n, oobn, flags, _, err = syscall.Recvmsg(fd, p, oob, syscall.MSG_DONTWAIT|syscall.MSG_CMSG_CLOEXEC)
		if err != syscall.EINTR {
			return n, oobn, flags, err
		}
	}
}
