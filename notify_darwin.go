// This file holds the macOS side of notify.go: a datagram on a unix socket
// carries no credentials there (LOCAL_PEERPID needs a connected stream socket),
// so prefork cannot tell who sent it; only the private directory keeps others
// out.
package main

import "net"

// notifyChecksSender: macOS cannot check who sent a datagram.
const notifyChecksSender = false

// notifyOOB is zero: with no room for control data, the kernel discards
// descriptors a sender passes along.
var notifyOOB = 0

func passCred(*net.UnixConn) error { return nil }

func notifySender([]byte) int { return 0 }
