//go:build linux || darwin

// This file binds the dispatcher to the rr wire format of internal/rrwire,
// which prefork shares with the worker package.
package main

import "github.com/prefork/prefork/internal/rrwire"

// sendConn sends one handoff message without blocking and without allocating:
// seq and the listener index with conn in SCM_RIGHTS. Errors are raw (EAGAIN
// included).
func sendConn(ch int, seq, index uint32, conn int) error {
	return rrwire.Send(ch, seq, index, conn)
}

// recvNoWait reads one message without blocking; descriptors that arrive with it
// are close-on-exec from the start. Errors are raw.
func recvNoWait(fd int, p, oob []byte) (n, oobn, flags int, err error) {
	return rrwire.Recv(fd, p, oob, true)
}

// closeRights closes every descriptor carried by a control message.
func closeRights(oob []byte) { rrwire.CloseRights(oob) }

// newHandoffPair returns a connected handoff socket pair, both ends
// close-on-exec and blocking. prefork keeps master; worker becomes fd 3 of the
// worker process.
func newHandoffPair() (master, worker int, err error) { return rrwire.NewPair() }

// sendWouldBlock reports whether a send failed only because the peer's queue is
// full for now.
func sendWouldBlock(err error) bool { return rrwire.WouldBlock(err) }
