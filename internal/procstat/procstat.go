//go:build linux || darwin

// Package procstat reads what the pool policy, the metrics and the control
// socket sample of other processes: a process group's memory and CPU time,
// and a listener's accept queue. It has no goroutine of its own; its callers
// own the buffers they pass. This file holds what both platforms share: the
// type of one process group's reading, and the count of prefork's own open
// descriptors.
package procstat

import (
	"os"
	"time"
)

// procUsage is what one worker's process group uses at the moment of a sample.
type Usage struct {
	// RSS is the sum of the resident set sizes of every live process in the
	// group, in bytes. Pages that processes of the group share (a pre-forking
	// worker's children) count once per process, as ps would add them up.
	RSS int64
	// CPU is the user plus system time of the group's live processes, plus the
	// time of the children they have reaped (cutime, cstime), so that it does
	// not go backwards when a short-lived child of the worker exits.
	CPU time.Duration
	// Procs is how many processes the group has.
	Procs int
}

// OpenFds counts this process's open descriptors; -1 when it cannot tell.
func OpenFds() int {
	f, err := os.Open("/dev/fd")
	if err != nil {
		return -1
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return -1
	}
	return len(names) - 1 // the directory itself
}
