// This file is the macOS side of procstat_linux.go. The standard library cannot
// read another process's resident memory or CPU time on macOS (that takes
// libproc's proc_pidinfo, outside the syscall package), nor the accept-queue
// length of a listener: the functions say so, and the options that need them
// are usage errors.
package main

import "errors"

// procstatSupported says whether groupUsage can read other processes here.
const procstatSupported = false

// acceptQueueSupported says whether acceptQueue can read a listener's queue here.
const acceptQueueSupported = false

// errProcstatUnsupported is what groupUsage returns on macOS.
var errProcstatUnsupported = errors.New("reading another process's memory and CPU time needs libproc on macOS, which prefork (standard library only) does not use")

// errAcceptQueueUnsupported is what acceptQueue returns on macOS.
var errAcceptQueueUnsupported = errors.New("the accept-queue length of a listener cannot be read on macOS")

// groupUsage is not available on macOS.
func groupUsage([]int, map[int]procUsage) (map[int]procUsage, error) {
	return nil, errProcstatUnsupported
}

// acceptQueue is not available on macOS.
func acceptQueue(fd int) (int, error) { return 0, errAcceptQueueUnsupported }
