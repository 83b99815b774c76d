// This file reads, on Linux, what the pool policy and the metrics sample: the
// resident memory and CPU time of each worker's process group (one pass over
// /proc for all workers) and the accept-queue length of a TCP listener
// (TCP_INFO). procstat_darwin.go defines the same names.
package main

import (
	"encoding/binary"
	"errors"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// procUsage is what one worker's process group uses at the moment of a sample.
type procUsage struct {
	// RSS is the sum of the resident set sizes of every live process in the
	// group, in bytes. Pages that processes of the group share (a pre-forking
	// worker's children) count once per process, as ps would add them up.
	RSS int64
	// CPU is the user plus system time of the group's live processes, plus the
	// time of the children they have reaped (cutime, cstime), so that it does
	// not go backwards when a short-lived child of the worker exits.
	CPU time.Duration
	// Procs is how many processes the group has.
	Procs int
}

// procstatSupported says whether groupUsage can read other processes here.
const procstatSupported = true

// acceptQueueSupported says whether acceptQueue can read a listener's queue here.
const acceptQueueSupported = true

// groupUsage samples the process groups whose ids (= the worker pids, each
// worker leads its own group) are in pgids, in one pass over /proc. Groups with
// no process left are missing from the map. It fails only when /proc cannot be
// listed; processes that exit during the pass are skipped.
func groupUsage(pgids []int) (map[int]procUsage, error) {
	want := make(map[int]bool, len(pgids))
	for _, p := range pgids {
		want[p] = true
	}
	out := make(map[int]procUsage, len(pgids))
	if len(pgids) == 0 {
		return out, nil
	}
	d, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	page, tick := int64(os.Getpagesize()), clockTick()
	buf := make([]byte, 1024)
	path := make([]byte, 0, 32)
	for _, name := range names {
		if name == "" || name[0] < '0' || name[0] > '9' {
			continue
		}
		path = append(append(path[:0], "/proc/"...), name...)
		path = append(path, "/stat"...)
		n := readSmall(string(path), buf)
		if n <= 0 {
			continue
		}
		st, ok := parseProcStat(buf[:n])
		if !ok || !want[st.pgrp] {
			continue
		}
		u := out[st.pgrp]
		u.RSS += st.rssPages * page
		u.CPU += time.Duration(st.ticks) * tick
		u.Procs++
		out[st.pgrp] = u
	}
	return out, nil
}

// readSmall reads up to len(buf) bytes of a /proc file into buf; 0 on any error.
func readSmall(path string, buf []byte) int {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return 0
	}
	defer syscall.Close(fd)
	n, err := syscall.Read(fd, buf)
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

// errNotListener: TCP_INFO answered for a socket that is not listening.
var errNotListener = errors.New("not a listening TCP socket")

// acceptQueue returns how many connections wait in a listening TCP socket's
// accept queue: completed handshakes no accept has taken yet. For a socket in
// the LISTEN state the kernel fills tcp_info's tcpi_unacked with the queue
// length and tcpi_sacked with its limit (the backlog). Unix and UDP sockets
// have no TCP_INFO: the error says so.
func acceptQueue(fd int) (int, error) {
	q, _, err := acceptQueueInfo(fd)
	return q, err
}

// acceptQueueInfo is acceptQueue plus the queue's limit (the effective backlog).
func acceptQueueInfo(fd int) (queue, limit int, err error) {
	// struct tcp_info begins: 8 bytes of u8 fields (tcpi_state first), then
	// u32 rto, ato, snd_mss, rcv_mss, unacked (offset 24), sacked (offset 28).
	var buf [104]byte
	l := uint32(len(buf))
	_, _, e := syscall.Syscall6(syscall.SYS_GETSOCKOPT, uintptr(fd), syscall.IPPROTO_TCP, syscall.TCP_INFO,
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return 0, 0, os.NewSyscallError("getsockopt TCP_INFO", e)
	}
	const tcpListen = 10
	if l < 32 || buf[0] != tcpListen {
		return 0, 0, errNotListener
	}
	return int(binary.NativeEndian.Uint32(buf[24:])), int(binary.NativeEndian.Uint32(buf[28:])), nil
}

// errProcstatUnsupported is nil on Linux: /proc has what groupUsage reads.
var errProcstatUnsupported error
