// This file is the macOS side of procstat_linux.go. The standard library cannot
// read another process's resident memory or CPU time on macOS (that takes
// libproc's proc_pidinfo, outside the syscall package), nor the accept-queue
// length of a listener: the functions say so, and the options that need them
// are usage errors.
package procstat

import "errors"

// procstatSupported says whether groupUsage can read other processes here.
const Supported = false

// acceptQueueSupported says whether acceptQueue can read a listener's queue here.
const AcceptQueueSupported = false

// errProcstatUnsupported is what groupUsage returns on macOS.
var ErrUnsupported = errors.New("reading another process's memory and CPU time needs libproc on macOS, which prefork (standard library only) does not use")

// errAcceptQueueUnsupported is what acceptQueue returns on macOS.
var errAcceptQueueUnsupported = errors.New("the accept-queue length of a listener cannot be read on macOS")

// groupUsage is not available on macOS.
func GroupUsage([]int, map[int]Usage) (map[int]Usage, error) {
	return nil, ErrUnsupported
}

// acceptQueue is not available on macOS.
func AcceptQueue(fd int) (int, error) { return 0, errAcceptQueueUnsupported }
