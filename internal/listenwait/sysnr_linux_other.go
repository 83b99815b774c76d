//go:build linux && !amd64 && !arm64

package listenwait

// Elsewhere the system call numbers are not known here: only epoll sets are
// read.
var (
	sysAccept, sysReceive, sysPoll, sysSelect []int
)
