//go:build linux && !386

// This file holds Send on Linux: sendmsg made raw, since it never blocks.
package rrwire

import (
	"syscall"
	"unsafe"
)

// Send sends one handoff message without blocking: seq and listener index with
// conn in SCM_RIGHTS. It allocates nothing, and, never blocking, enters the
// kernel without telling the Go scheduler (RawSyscall). Errors are raw
// syscall.Errno values (see WouldBlock).
func Send(ch int, seq, index uint32, conn int) error {
	var msg [MsgLen]byte
	Put(&msg, seq, index)
	var oob [64]byte
	PutRight(oob[:], conn)
	iov := syscall.Iovec{Base: &msg[0]}
	iov.SetLen(MsgLen)
	h := syscall.Msghdr{Iov: &iov, Iovlen: 1, Control: &oob[0]}
	h.SetControllen(RightsSpace)
	for {
		_, _, e := syscall.RawSyscall(syscall.SYS_SENDMSG, uintptr(ch), uintptr(unsafe.Pointer(&h)), SendFlags)
		switch e {
		case 0:
			return nil
		case syscall.EINTR:
			continue
		}
		return e
	}
}
