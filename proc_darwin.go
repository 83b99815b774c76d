// This file holds the macOS side of process handling. macOS has no parent-death
// signal and no child-subreaper bit: the man page says what that means.
package main

import (
	"os"
	"syscall"
	"time"
)

const (
	sigPWR             = syscall.Signal(0)
	reuseportSupported = false
	hasPdeathsig       = false
)

// workerProcAttr puts the worker in its own process group.
func workerProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// setSubreaper is a no-op: only pid 1 inherits orphans on macOS.
func setSubreaper() error { return nil }

func setPdeathsig() error { return nil }

func selfExe() (string, error) { return os.Executable() }

var processStart = time.Now()

// monotonicNow approximates CLOCK_MONOTONIC (macOS has no systemd to read it).
func monotonicNow() time.Duration { return time.Since(processStart) }

// ownChildren: macOS has no subreaper, so no descendant of a worker is ever
// prefork's child.
func ownChildren() []int { return nil }
