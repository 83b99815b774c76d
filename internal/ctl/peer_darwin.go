// This file holds the macOS side of the peer check: the control socket's peer
// credentials, from LOCAL_PEERCRED.
package ctl

import (
	"fmt"
	"os"
	"syscall"
)

// LOCAL_PEERCRED at level SOL_LOCAL fills a struct xucred: cr_version (uint32,
// XUCRED_VERSION = 0), cr_uid (uint32), then the groups.
const (
	solLocal      = 0
	localPeercred = 1
	xucredVersion = 0
)

// peerUID returns the uid of the process at the other end of a connected unix
// stream socket, as the kernel recorded it at connect time. The syscall package
// has no getsockopt for struct xucred; ICMPv6Filter is a 32-byte buffer of
// uint32s that the kernel fills with the first 32 bytes of it (sooptcopyout
// copies no more than the caller's buffer holds), which is what getpeereid(3)
// reads too.
func peerUID(fd int) (int, error) {
	x, err := syscall.GetsockoptICMPv6Filter(fd, solLocal, localPeercred)
	if err != nil {
		return -1, os.NewSyscallError("getsockopt LOCAL_PEERCRED", err)
	}
	if x.Filt[0] != xucredVersion {
		return -1, fmt.Errorf("getsockopt LOCAL_PEERCRED: unknown xucred version %d", x.Filt[0])
	}
	return int(x.Filt[1]), nil
}
