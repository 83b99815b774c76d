// This file holds the macOS side of the exec, which this version does not
// do: macOS has neither memfd nor a path that executes an open descriptor,
// so the way back to the old image cannot be kept. The upgrade is refused.
package upgrade

import (
	"errors"
	"syscall"
)

// Supported: the upgrade runs on Linux only.
const Supported = false

var errDarwin = errors.New("prefork upgrade needs Linux")

func stateFile() (int, error)                            { return -1, errDarwin }
func OpenSelf() (int, error)                             { return -1, errDarwin }
func FDPath(fd int) string                               { return "" }
func Keep(fds []int) error                               { return errDarwin }
func Release(fds []int)                                  {}
func SetMask(mask uint64)                                {}
func BlockSignals(sigs []syscall.Signal) (uint64, error) { return 0, errDarwin }

func PendingSignals() uint64 { return 0 }
