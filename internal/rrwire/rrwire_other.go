//go:build unix && !linux && !darwin

// This file stands in for the handoff channel on Unix systems prefork does not
// run on: the worker package builds there, and rr mode says it is not
// supported.
package rrwire

import (
	"errors"
	"runtime"
	"syscall"
)

// SocketType matches no socket type: rr mode needs Linux or macOS.
const SocketType = -1

// ErrUnsupported says rr mode does not run on this system.
var ErrUnsupported = errors.New("prefork's rr mode needs Linux or macOS, not " + runtime.GOOS)

func NewPair() (master, worker int, err error) { return -1, -1, ErrUnsupported }
func SocketPair(int) (a, b int, err error)     { return -1, -1, ErrUnsupported }
func Recv(int, []byte, []byte, bool) (n, oobn, flags int, err error) {
	return 0, 0, 0, syscall.EOPNOTSUPP
}
func Send(int, uint32, uint32, int) error { return syscall.EOPNOTSUPP }
func WouldBlock(error) bool               { return false }

// Batch reads nothing on this system.
type Batch struct{}

func NewBatch(n, size int) *Batch                   { return &Batch{} }
func (b *Batch) Recv(int) (int, error)              { return 0, syscall.EOPNOTSUPP }
func (b *Batch) Cap() int                           { return 0 }
func (b *Batch) Msg(int) (p, oob []byte, flags int) { return nil, nil, 0 }
