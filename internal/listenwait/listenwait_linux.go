// This file reads, on Linux, whether a process waits for connections:
//
//   - /proc/PID/task/TID/syscall names the system call each thread is blocked
//     in and its arguments: accept, accept4, recvmsg, recvfrom and read name
//     the descriptor; poll, ppoll, select and pselect6 point at the descriptor
//     sets, read from /proc/PID/mem (prefork is the worker's parent, so the
//     kernel lets it read its memory, as it lets it ptrace it);
//   - /proc/PID/fdinfo/N of each epoll descriptor lists what the set watches,
//     one "tfd: N events: HEX ... ino:HEX sdev:HEX" line each;
//   - a descriptor is one of the sockets when stat through /proc/PID/fd/N
//     gives its device and inode.
//
// The processes looked at are the worker and its descendants, found through
// /proc/PID/task/TID/children (or, where the kernel has no such file, one
// pass over /proc).
package listenwait

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// Supported says whether Check can see anything on this system at all.
var Supported, childrenFiles = probe()

func probe() (bool, bool) {
	_, err := os.Stat("/proc/self/syscall")
	tid := strconv.Itoa(syscall.Gettid())
	_, cerr := os.Stat("/proc/self/task/" + tid + "/children")
	return err == nil, cerr == nil
}

// Check looks once at pid and its descendants: the first way one of them is
// seen waiting on one of socks, None if none is, ErrCannotObserve (wrapped)
// where pid's waits cannot be read, or another error when pid is gone.
func Check(pid int, socks []Sock) (Way, error) {
	if !Supported {
		return None, fmt.Errorf("%w: this kernel has no /proc/PID/syscall", ErrCannotObserve)
	}
	procs, err := family(pid)
	if err != nil {
		return None, err
	}
	for _, p := range procs {
		way, err := checkProc(p, socks)
		if err != nil && p.pid == pid {
			return None, err
		}
		if way != None {
			return way, nil
		}
	}
	return None, nil
}

// proc is one process of a worker's family and its threads.
type proc struct {
	pid  int
	tids []string
}

// family is pid and its descendants, pid first; an error when pid is gone.
func family(pid int) ([]proc, error) {
	pids := []int{pid}
	if !childrenFiles {
		var err error
		if pids, err = scanFamily(pid); err != nil {
			return nil, err
		}
	}
	var out []proc
	for i := 0; i < len(pids) && i < 4096; i++ {
		dir := "/proc/" + strconv.Itoa(pids[i]) + "/task/"
		tids, err := readNames(dir)
		if err != nil {
			if i == 0 {
				return nil, err
			}
			continue
		}
		out = append(out, proc{pids[i], tids})
		if !childrenFiles {
			continue
		}
		for _, tid := range tids {
			b, _ := os.ReadFile(dir + tid + "/children")
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil && !slices.Contains(pids, c) {
					pids = append(pids, c)
				}
			}
		}
	}
	return out, nil
}

// scanFamily is family from every process's parent, read in one pass over /proc.
func scanFamily(pid int) ([]int, error) {
	names, err := readNames("/proc")
	if err != nil {
		return nil, err
	}
	kids := map[int][]int{}
	for _, n := range names {
		p, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + n + "/stat")
		if i := bytes.LastIndexByte(b, ')'); err == nil && i > 0 {
			if f := strings.Fields(string(b[i+1:])); len(f) > 1 {
				pp, _ := strconv.Atoi(f[1])
				kids[pp] = append(kids[pp], p)
			}
		}
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, kids[out[i]]...)
	}
	return out, nil
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// checkProc looks at one process: its threads' system calls, then its epoll sets.
func checkProc(p proc, socks []Sock) (Way, error) {
	base := "/proc/" + strconv.Itoa(p.pid) + "/"
	var mem *os.File
	defer func() {
		if mem != nil {
			mem.Close()
		}
	}()
	for _, tid := range p.tids {
		b, err := os.ReadFile(base + "task/" + tid + "/syscall")
		if errors.Is(err, fs.ErrPermission) {
			return None, fmt.Errorf("%w: %v", ErrCannotObserve, err)
		}
		nr, args, ok := parseSyscall(b)
		if !ok {
			continue
		}
		var fds []int
		way := None
		switch {
		case slices.Contains(sysAccept, nr):
			fds, way = []int{int(int32(args[0]))}, Accept
		case slices.Contains(sysReceive, nr):
			fds, way = []int{int(int32(args[0]))}, Receive
		case slices.Contains(sysPoll, nr), slices.Contains(sysSelect, nr):
			if mem == nil {
				if mem, err = os.Open(base + "mem"); err != nil {
					mem = nil
					continue // not readable: epoll may still tell
				}
			}
			if slices.Contains(sysPoll, nr) {
				fds, way = pollSet(mem, args[0], args[1]), Poll
			} else {
				fds, way = selectSet(mem, args[0], args[1]), Select
			}
		}
		for _, fd := range fds {
			if isSock(base, fd, socks) {
				return way, nil
			}
		}
	}
	return epollSets(base, socks), nil
}

// parseSyscall reads "NR ARG0 … ARG5 SP PC"; a thread running, or blocked
// outside a system call, gives "running" or "-1 …".
func parseSyscall(b []byte) (int, [6]uint64, bool) {
	var args [6]uint64
	f := strings.Fields(string(b))
	if len(f) < 7 {
		return 0, args, false
	}
	nr, err := strconv.Atoi(f[0])
	if err != nil || nr < 0 {
		return 0, args, false
	}
	for i := range args {
		v, err := strconv.ParseUint(strings.TrimPrefix(f[1+i], "0x"), 16, 64)
		if err != nil {
			return 0, args, false
		}
		args[i] = v
	}
	return nr, args, true
}

const (
	maxPollFds = 1 << 16 // the most pollfds read from one poll: 512 KiB
	pollIn     = 0x1 | 0x40
)

// pollSet is the descriptors a poll or ppoll waits on for input.
func pollSet(mem *os.File, addr, n uint64) []int {
	if n == 0 || n > maxPollFds || addr == 0 {
		return nil
	}
	buf := make([]byte, n*8)
	if k, err := mem.ReadAt(buf, int64(addr)); err != nil || k != len(buf) {
		return nil
	}
	var fds []int
	for i := 0; i+8 <= len(buf); i += 8 {
		fd := int32(binary.NativeEndian.Uint32(buf[i:]))
		if ev := binary.NativeEndian.Uint16(buf[i+4:]); fd >= 0 && ev&pollIn != 0 {
			fds = append(fds, int(fd))
		}
	}
	return fds
}

// selectSet is the descriptors in a select or pselect6 read set: nfds bits,
// in longs (little-endian on both architectures, so byte by byte).
func selectSet(mem *os.File, nfds, addr uint64) []int {
	if nfds == 0 || nfds > maxPollFds || addr == 0 {
		return nil
	}
	buf := make([]byte, (nfds+63)/64*8)
	if k, err := mem.ReadAt(buf, int64(addr)); err != nil || k != len(buf) {
		return nil
	}
	var fds []int
	for fd := 0; fd < int(nfds); fd++ {
		if buf[fd/8]&(1<<(fd%8)) != 0 {
			fds = append(fds, fd)
		}
	}
	return fds
}

// isSock says whether the process's descriptor fd is one of socks.
func isSock(base string, fd int, socks []Sock) bool {
	if fd < 0 {
		return false
	}
	var st syscall.Stat_t
	if syscall.Stat(base+"fd/"+strconv.Itoa(fd), &st) != nil {
		return false
	}
	return slices.Contains(socks, Sock{Dev: uint64(st.Dev), Ino: uint64(st.Ino)})
}

// epollSets says Epoll when one of the process's epoll sets watches one of
// socks for input.
func epollSets(base string, socks []Sock) Way {
	fds, _ := readNames(base + "fd")
	for _, fd := range fds {
		if l, err := os.Readlink(base + "fd/" + fd); err != nil || l != "anon_inode:[eventpoll]" {
			continue
		}
		b, _ := os.ReadFile(base + "fdinfo/" + fd)
		for _, line := range strings.Split(string(b), "\n") {
			if !strings.HasPrefix(line, "tfd:") {
				continue
			}
			events, ino, sdev, ok := parseTfd(line)
			if !ok || events&pollIn == 0 {
				continue
			}
			for _, s := range socks {
				if s.Ino == ino && kernelDev(s.Dev) == sdev {
					return Epoll
				}
			}
		}
	}
	return None
}

// parseTfd reads "tfd: N events: HEX data: HEX pos:N ino:HEX sdev:HEX".
func parseTfd(line string) (events, ino, sdev uint64, ok bool) {
	f := strings.Fields(line)
	n := 0
	for i, w := range f {
		var err error
		switch {
		case w == "events:" && i+1 < len(f):
			events, err = strconv.ParseUint(f[i+1], 16, 32)
			n++
		case strings.HasPrefix(w, "ino:"):
			ino, err = strconv.ParseUint(w[4:], 16, 64)
			n++
		case strings.HasPrefix(w, "sdev:"):
			sdev, err = strconv.ParseUint(w[5:], 16, 64)
			n++
		}
		if err != nil {
			return 0, 0, 0, false
		}
	}
	return events, ino, sdev, n == 3
}

// kernelDev turns a device number as stat gives it into the kernel's own
// encoding, which fdinfo prints: major in the top 12 bits of 32, minor below.
func kernelDev(dev uint64) uint64 {
	major := (dev>>8)&0xfff | (dev>>32)&^0xfff
	minor := dev&0xff | (dev>>12)&^0xff
	return major<<20 | minor
}
