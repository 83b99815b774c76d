//go:build unix && !linux && !darwin

// This file stands in for the rr handoff channel on Unix systems prefork does
// not run on: the package builds there (Listeners works with systemd or any
// manager that passes LISTEN_FDS), and rr mode says it is not supported.
package worker

import (
	"errors"
	"runtime"
	"syscall"
)

// handoffType matches no socket type: rr mode needs Linux or macOS.
const handoffType = -1

var errNoHandoff = errors.New("worker: prefork's rr mode needs Linux or macOS, not " + runtime.GOOS)

func recvNoWait(int, []byte, []byte) (int, int, int, error) { return 0, 0, 0, syscall.EOPNOTSUPP }
