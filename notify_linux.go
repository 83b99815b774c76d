// This file holds the Linux side of notify.go: with SO_PASSCRED set on a notify
// socket, the kernel attaches the sender's pid to every datagram
// (SCM_CREDENTIALS), so prefork can tell who sent it.
package main

import (
	"net"
	"os"
	"syscall"
)

// notifyChecksSender: on Linux, only the worker and its process group count.
const notifyChecksSender = true

// notifyOOB is room for the credentials only: descriptors a sender passes along
// do not fit, and the kernel closes them instead of installing them in prefork.
var notifyOOB = syscall.CmsgSpace(syscall.SizeofUcred)

// passCred makes the kernel attach the sender's credentials to each datagram.
func passCred(c *net.UnixConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1)
	}); err != nil {
		return err
	}
	return os.NewSyscallError("setsockopt SO_PASSCRED", serr)
}

// notifySender reads the sender's pid from a datagram's control data; 0 when
// the datagram carries none (or the sender lives in a pid namespace prefork
// cannot see into).
func notifySender(oob []byte) int {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return 0
	}
	for i := range msgs {
		if msgs[i].Header.Level == syscall.SOL_SOCKET && msgs[i].Header.Type == syscall.SCM_CREDENTIALS {
			if cred, err := syscall.ParseUnixCredentials(&msgs[i]); err == nil {
				return int(cred.Pid)
			}
		}
	}
	return 0
}
