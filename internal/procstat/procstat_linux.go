// This file reads, on Linux, what the pool policy and the metrics sample: the
// resident memory and CPU time of each worker's process group (one pass over
// /proc for all workers) and the accept-queue length of a listener (TCP_INFO
// for TCP, sock_diag for unix stream sockets). procstat_darwin.go defines the
// same names.
package procstat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// procstatSupported says whether groupUsage can read other processes here.
const Supported = true

// acceptQueueSupported says whether acceptQueue can read a listener's queue here.
const AcceptQueueSupported = true

// groupUsage samples the process groups whose ids (= the worker pids, each
// worker leads its own group) are in pgids, in one pass over /proc. Groups with
// no process left are missing from the map. It fails only when /proc cannot be
// listed; processes that exit during the pass are skipped. The figures go
// into out, cleared first, when it is not nil.
//
// It runs every second for as long as prefork does, so the pass allocates
// nothing per process: directory entries, paths and stat lines go through
// buffers kept between calls (os.ReadDir and os.ReadFile made 20 KB of garbage
// a second, which let an idle prefork's heap, and so its RSS, grow to the
// GC's 4 MB floor).
func GroupUsage(pgids []int, out map[int]Usage) (map[int]Usage, error) {
	if out == nil {
		out = make(map[int]Usage, len(pgids))
	}
	clear(out)
	if len(pgids) == 0 {
		return out, nil
	}
	procScan.Lock()
	defer procScan.Unlock()
	sc := &procScan
	if sc.dirents == nil {
		sc.dirents = make([]byte, 16<<10)
		sc.stat = make([]byte, 1024)
		sc.path = make([]byte, 0, 32)
		sc.want = make(map[int]bool)
	}
	clear(sc.want) // keeps its buckets: no allocation once it has seen this many workers
	for _, p := range pgids {
		sc.want[p] = true
	}
	dir, err := syscall.Open("/proc", syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("open /proc", err)
	}
	defer syscall.Close(dir)
	page, tick := int64(os.Getpagesize()), clockTick()
	for {
		n, err := syscall.Getdents(dir, sc.dirents)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, os.NewSyscallError("getdents /proc", err)
		}
		if n <= 0 {
			return out, nil
		}
		for b := sc.dirents[:n]; len(b) >= direntNameOff; {
			reclen := int(binary.NativeEndian.Uint16(b[direntReclenOff:]))
			if reclen < direntNameOff || reclen > len(b) {
				break
			}
			name := b[direntNameOff:reclen]
			b = b[reclen:]
			if !isPid(name) {
				continue
			}
			k := sc.readStat(dir, name)
			if k <= 0 {
				continue
			}
			st, ok := parseProcStat(sc.stat[:k])
			if !ok || !sc.want[st.pgrp] {
				continue
			}
			u := out[st.pgrp]
			u.RSS += st.rssPages * page
			u.CPU += time.Duration(st.ticks) * tick
			u.Procs++
			out[st.pgrp] = u
		}
	}
}

// procScanner holds groupUsage's buffers, in procScan; the pool and the control server both
// sample.
type procScanner struct {
	sync.Mutex
	dirents, stat, path []byte
	want                map[int]bool // the process groups asked for
}

var procScan procScanner

// Where a struct linux_dirent64 (getdents64) keeps its length and its name.
const (
	direntReclenOff = 16
	direntNameOff   = 19
)

// isPid reports whether a NUL-padded /proc entry name is a number.
func isPid(name []byte) bool {
	if len(name) == 0 || name[0] < '0' || name[0] > '9' {
		return false
	}
	for _, c := range name {
		if c == 0 {
			return true
		}
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// readStat reads /proc/PID/stat, PID the entry name in the /proc directory
// dir, into sc.stat without allocating; 0 on any error.
func (sc *procScanner) readStat(dir int, name []byte) int {
	p := sc.path[:0]
	for _, c := range name {
		if c == 0 {
			break
		}
		p = append(p, c)
	}
	p = append(p, "/stat\x00"...)
	sc.path = p
	r, _, e := syscall.Syscall6(syscall.SYS_OPENAT, uintptr(dir), uintptr(unsafe.Pointer(&p[0])),
		syscall.O_RDONLY|syscall.O_CLOEXEC, 0, 0, 0)
	if e != 0 {
		return 0
	}
	fd := int(r)
	defer syscall.Close(fd)
	n, err := syscall.Read(fd, sc.stat)
	if err != nil {
		return 0
	}
	return n
}

// procStat is what groupUsage needs of one /proc/PID/stat line.
type procStat struct {
	pgrp     int
	ticks    int64 // utime + stime + cutime + cstime, in clock ticks
	rssPages int64
}

// parseProcStat reads /proc/PID/stat (proc(5)): "pid (comm) state ppid pgrp …".
// comm may hold spaces and parentheses, so fields count from the last ')'.
func parseProcStat(b []byte) (procStat, bool) {
	end := -1
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == ')' {
			end = i
			break
		}
	}
	if end < 0 {
		return procStat{}, false
	}
	// Fields after comm, numbered from 3 as in proc(5): 3 state, 5 pgrp,
	// 14 utime, 15 stime, 16 cutime, 17 cstime, 24 rss.
	var st procStat
	field, i := 2, end+1
	for i < len(b) && field < 24 {
		for i < len(b) && b[i] == ' ' {
			i++
		}
		j := i
		for j < len(b) && b[j] != ' ' && b[j] != '\n' {
			j++
		}
		field++
		tok := b[i:j]
		i = j
		switch field {
		case 5:
			v, ok := atoi64(tok)
			if !ok {
				return procStat{}, false
			}
			st.pgrp = int(v)
		case 14, 15, 16, 17:
			v, ok := atoi64(tok)
			if !ok {
				return procStat{}, false
			}
			st.ticks += v
		case 24:
			v, ok := atoi64(tok)
			if !ok {
				return procStat{}, false
			}
			st.rssPages = max(v, 0)
			return st, true
		}
	}
	return procStat{}, false
}

// atoi64 parses a decimal that may start with '-'.
func atoi64(b []byte) (int64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	v, err := strconv.ParseInt(string(b), 10, 64)
	return v, err == nil
}

var clockTickOnce = sync.OnceValue(func() time.Duration {
	// AT_CLKTCK (17) in the auxiliary vector is what sysconf(_SC_CLK_TCK)
	// returns; it is 100 on every Linux architecture prefork supports.
	b, err := os.ReadFile("/proc/self/auxv")
	if err == nil {
		for i := 0; i+16 <= len(b); i += 16 {
			k, v := binary.NativeEndian.Uint64(b[i:]), binary.NativeEndian.Uint64(b[i+8:])
			if k == 17 && v > 0 && v <= 1e6 {
				return time.Second / time.Duration(v)
			}
			if k == 0 {
				break
			}
		}
	}
	return 10 * time.Millisecond
})

// clockTick is the length of one clock tick of /proc/PID/stat's time fields.
func clockTick() time.Duration { return clockTickOnce() }

// errNotListener: the socket is not a listening TCP or unix stream socket.
var errNotListener = errors.New("not a listening TCP or unix stream socket")

// acceptQueue returns how many connections wait in a listening socket's
// accept queue: connections the kernel has completed and no accept has taken
// yet. TCP sockets answer through TCP_INFO, unix stream sockets through
// sock_diag; a UDP socket has no accept queue, and the error says so.
func AcceptQueue(fd int) (int, error) {
	q, _, err := acceptQueueInfo(fd)
	return q, err
}

// acceptQueueInfo is acceptQueue plus the queue's limit (the effective backlog).
func acceptQueueInfo(fd int) (queue, limit int, err error) {
	domain, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_DOMAIN)
	if err != nil {
		return 0, 0, os.NewSyscallError("getsockopt SO_DOMAIN", err)
	}
	if domain == syscall.AF_UNIX {
		return unixAcceptQueue(fd)
	}
	return tcpAcceptQueue(fd)
}

// tcpAcceptQueue reads a TCP listener's queue: for a socket in the LISTEN
// state the kernel fills tcp_info's tcpi_unacked with the queue length and
// tcpi_sacked with its limit (the backlog).
func tcpAcceptQueue(fd int) (queue, limit int, err error) {
	// struct tcp_info begins: 8 bytes of u8 fields (tcpi_state first), then
	// u32 rto, ato, snd_mss, rcv_mss, unacked (offset 24), sacked (offset 28).
	var buf [104]byte
	l := uint32(len(buf))
	_, _, e := syscall.Syscall6(syscall.SYS_GETSOCKOPT, uintptr(fd), syscall.IPPROTO_TCP, syscall.TCP_INFO,
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
	if e == syscall.EOPNOTSUPP || e == syscall.ENOPROTOOPT {
		return 0, 0, errNotListener // UDP
	}
	if e != 0 {
		return 0, 0, os.NewSyscallError("getsockopt TCP_INFO", e)
	}
	if l < 32 || buf[0] != tcpListenState {
		return 0, 0, errNotListener
	}
	return int(binary.NativeEndian.Uint32(buf[24:])), int(binary.NativeEndian.Uint32(buf[28:])), nil
}

// unixAcceptQueue reads a unix stream listener's queue through sock_diag
// (unix_diag(7)): one SOCK_DIAG_BY_FAMILY request for the socket's inode with
// UDIAG_SHOW_RQLEN, answered with unix_diag_rqlen, whose udiag_rqueue is the
// number of pending connections of a listening socket and udiag_wqueue its
// backlog. It needs a kernel built with CONFIG_UNIX_DIAG.
func unixAcceptQueue(fd int) (queue, limit int, err error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return 0, 0, os.NewSyscallError("fstat", err)
	}
	nl, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, netlinkSockDiag)
	if err != nil {
		return 0, 0, os.NewSyscallError("socket NETLINK_SOCK_DIAG", err)
	}
	defer syscall.Close(nl)
	syscall.SetsockoptTimeval(nl, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &syscall.Timeval{Sec: 1})
	// struct nlmsghdr (16 bytes) + struct unix_diag_req (24 bytes).
	req := make([]byte, 40)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], 40)
	ne.PutUint16(req[4:], sockDiagByFamily)
	ne.PutUint16(req[6:], syscall.NLM_F_REQUEST)
	ne.PutUint32(req[8:], 1) // sequence number
	req[16] = syscall.AF_UNIX
	ne.PutUint32(req[20:], 1<<tcpListenState) // udiag_states
	ne.PutUint32(req[24:], uint32(st.Ino))    // udiag_ino
	ne.PutUint32(req[28:], udiagShowRqlen)    // udiag_show
	ne.PutUint32(req[32:], ^uint32(0))        // udiag_cookie: none
	ne.PutUint32(req[36:], ^uint32(0))
	if err := syscall.Sendto(nl, req, 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return 0, 0, os.NewSyscallError("sendto NETLINK_SOCK_DIAG", err)
	}
	buf := make([]byte, 4096)
	n, _, err := syscall.Recvfrom(nl, buf, 0)
	if err != nil {
		return 0, 0, os.NewSyscallError("recvfrom NETLINK_SOCK_DIAG", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil || len(msgs) == 0 {
		return 0, 0, fmt.Errorf("sock_diag: unreadable answer")
	}
	m := msgs[0]
	if m.Header.Type == syscall.NLMSG_ERROR {
		if len(m.Data) >= 4 {
			if e := -int32(ne.Uint32(m.Data)); e != 0 {
				return 0, 0, os.NewSyscallError("sock_diag", syscall.Errno(e))
			}
		}
		return 0, 0, fmt.Errorf("sock_diag: error answer")
	}
	// struct unix_diag_msg (16 bytes: family, type, state, pad, ino, cookie[2]),
	// then attributes.
	d := m.Data
	if len(d) < 16 {
		return 0, 0, fmt.Errorf("sock_diag: short answer")
	}
	if d[1] != syscall.SOCK_STREAM && d[1] != syscall.SOCK_SEQPACKET || d[2] != tcpListenState {
		return 0, 0, errNotListener
	}
	for a := d[16:]; len(a) >= 4; {
		l, typ := int(ne.Uint16(a)), ne.Uint16(a[2:])
		if l < 4 || l > len(a) {
			break
		}
		if typ == unixDiagRqlen && l >= 12 {
			return int(ne.Uint32(a[4:])), int(ne.Uint32(a[8:])), nil
		}
		a = a[min((l+3)&^3, len(a)):]
	}
	return 0, 0, fmt.Errorf("sock_diag: no queue length in the answer")
}

// sock_diag constants (linux/sock_diag.h, linux/unix_diag.h).
const (
	netlinkSockDiag  = 4  // NETLINK_SOCK_DIAG
	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
	udiagShowRqlen   = 0x10
	unixDiagRqlen    = 4  // UNIX_DIAG_RQLEN
	tcpListenState   = 10 // TCP_LISTEN, which unix sockets share
)

// errProcstatUnsupported is nil on Linux: /proc has what groupUsage reads.
var ErrUnsupported error
