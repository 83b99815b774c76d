//go:build !linux

// This file stands in for the suite where it cannot run: it needs Linux
// (/proc, pid namespaces, SO_REUSEPORT balancing).
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "reliability: the suite runs on Linux only")
	os.Exit(2)
}
