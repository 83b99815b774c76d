// This file holds the Linux side of the peer check: the control socket's peer
// credentials, from SO_PEERCRED.
package ctl

import (
	"os"
	"syscall"
)

// peerUID returns the uid of the process at the other end of a connected unix
// stream socket, as the kernel recorded it at connect time.
func peerUID(fd int) (int, error) {
	cred, err := syscall.GetsockoptUcred(fd, syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	if err != nil {
		return -1, os.NewSyscallError("getsockopt SO_PEERCRED", err)
	}
	return int(cred.Uid), nil
}
