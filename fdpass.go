//go:build linux || darwin

// This file holds the descriptor passing that both platforms share: one
// handoff message with its SCM_RIGHTS descriptor, without allocating.
package main

import (
	"encoding/binary"
	"syscall"
)

// sendConn sends one handoff message without blocking: seq and the listener
// index, big-endian, with conn in SCM_RIGHTS. Errors are raw (EAGAIN included).
func sendConn(ch int, seq, index uint32, conn int) error {
	var msg [8]byte
	binary.BigEndian.PutUint32(msg[0:], seq)
	binary.BigEndian.PutUint32(msg[4:], index)
	var oob [64]byte
	n := copy(oob[:], rightsTemplate)
	binary.NativeEndian.PutUint32(oob[syscall.CmsgLen(0):], uint32(conn))
	for {
		err := syscall.Sendmsg(ch, msg[:], oob[:n], nil, sendFlags)
		if err != syscall.EINTR {
			return err
		}
	}
}

// closeRights closes every descriptor carried by a control message.
func closeRights(oob []byte) {
	msgs, _ := syscall.ParseSocketControlMessage(oob)
	for i := range msgs {
		fds, _ := syscall.ParseUnixRights(&msgs[i])
		for _, fd := range fds {
			syscall.Close(fd)
		}
	}
}
