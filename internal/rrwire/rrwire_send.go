//go:build darwin || (linux && 386)

// This file holds Send where sendmsg is not a plain system call of its own
// (socketcall on linux/386) or not to be made raw (macOS goes through libc).
package rrwire

import (
	"syscall"
)

// Send sends one handoff message without blocking: seq and listener index with
// conn in SCM_RIGHTS. It allocates nothing. Errors are raw syscall.Errno values
// (see WouldBlock).
func Send(ch int, seq, index uint32, conn int) error {
	var msg [MsgLen]byte
	Put(&msg, seq, index)
	var oob [64]byte
	PutRight(oob[:], conn)
	for {
		err := syscall.Sendmsg(ch, msg[:], oob[:RightsSpace], nil, SendFlags)
		if err != syscall.EINTR {
			return err
		}
	}
}
