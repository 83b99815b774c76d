package listenwait

// The arm64 system call numbers /proc/PID/syscall names (arm64 has no poll or
// select: libc calls ppoll and pselect6).
var (
	sysAccept  = []int{202, 242}     // accept, accept4: fd first
	sysReceive = []int{63, 207, 212} // read, recvfrom, recvmsg: fd first
	sysPoll    = []int{73}           // ppoll: struct pollfd *, nfds
	sysSelect  = []int{72}           // pselect6: nfds, fd_set *readfds
)
