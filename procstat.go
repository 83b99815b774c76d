//go:build linux || darwin

// This file holds what procstat_linux.go and procstat_darwin.go share: the
// type of one process group's reading.
package main

import "time"

// procUsage is what one worker's process group uses at the moment of a sample.
type procUsage struct {
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
