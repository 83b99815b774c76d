// This file holds the CPU count for -n auto on macOS.
package main

import "runtime"

// autoWorkers returns the number of CPUs this process may use: macOS has neither
// CPU affinity masks nor cgroups, so it is the number of logical CPUs.
func autoWorkers() int { return runtime.NumCPU() }
