package listenwait

// The x86_64 system call numbers /proc/PID/syscall names.
var (
	sysAccept  = []int{43, 288}   // accept, accept4: fd first
	sysReceive = []int{0, 45, 47} // read, recvfrom, recvmsg: fd first
	sysPoll    = []int{7, 271}    // poll, ppoll: struct pollfd *, nfds
	sysSelect  = []int{23, 270}   // select, pselect6: nfds, fd_set *readfds
)
