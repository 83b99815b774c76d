// This file holds the macOS side of the pidfile check.
package main

import "time"

// pidStarted cannot tell on macOS without libproc: a live pid in a pidfile
// counts as running.
func pidStarted(int) (time.Time, bool) { return time.Time{}, false }
