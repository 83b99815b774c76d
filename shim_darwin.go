// This file holds the macOS side of shim.go: the signal mask a worker starts
// with.
package main

// resetSignalMask does nothing on macOS, where the syscall package has no
// pthread_sigmask: a worker starts with the signal mask prefork was started
// with (empty, unless whatever started prefork blocked signals).
func resetSignalMask() error { return nil }
