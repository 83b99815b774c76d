//go:build !linux && !darwin

// This file stops the build of prefork on systems it does not support, with a
// message that says so: the supervisor needs Linux or macOS (the parent-death
// signal, descriptor passing, the per-platform socket calls). The Go package
// github.com/prefork/prefork/worker builds on every Unix system.
package main

var _ = prefork_builds_on_linux_and_macos_only
