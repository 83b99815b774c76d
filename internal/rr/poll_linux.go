// This file holds the dispatcher's readiness poller on Linux: an epoll set
// of its own, waited on by one locked thread in a blocking epoll_wait, and a
// pipe to wake it.
package rr

import (
	"os"
	"syscall"
)

// poller watches the dispatcher's descriptors for reading.
type poller struct {
	ep  int
	wr  int      // wake pipe: read end in the set
	ww  *os.File // write end for wake; an os.File, so that a wake racing close cannot write a reused number
	evs []syscall.EpollEvent
}

func newPoller() (*poller, error) {
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		syscall.Close(ep)
		return nil, os.NewSyscallError("pipe2", err)
	}
	syscall.SetNonblock(p[1], false) // blocking, so that os.File leaves it out of the runtime's poller; a wake is one byte per loop turn
	pl := &poller{ep: ep, wr: p[0], ww: os.NewFile(uintptr(p[1]), "rr-wake"), evs: make([]syscall.EpollEvent, 64)}
	if err := pl.add(pl.wr, true); err != nil {
		pl.close()
		return nil, err
	}
	return pl, nil
}

func epollEvents(read bool) uint32 {
	if read {
		return syscall.EPOLLIN
	}
	return 0 // errors and hang-ups are still reported
}

// add watches fd, for reading if read (level-triggered).
func (p *poller) add(fd int, read bool) error {
	ev := syscall.EpollEvent{Events: epollEvents(read), Fd: int32(fd)}
	return os.NewSyscallError("epoll_ctl", syscall.EpollCtl(p.ep, syscall.EPOLL_CTL_ADD, fd, &ev))
}

// set turns watching fd for reading on or off.
func (p *poller) set(fd int, read bool) error {
	ev := syscall.EpollEvent{Events: epollEvents(read), Fd: int32(fd)}
	return os.NewSyscallError("epoll_ctl", syscall.EpollCtl(p.ep, syscall.EPOLL_CTL_MOD, fd, &ev))
}

// del stops watching fd.
func (p *poller) del(fd int) {
	syscall.EpollCtl(p.ep, syscall.EPOLL_CTL_DEL, fd, nil)
}

// wait blocks until descriptors are ready, or for timeout milliseconds unless
// it is negative, and writes them to fds; the wake pipe is drained and not
// reported.
func (p *poller) wait(fds []int, timeout int) (int, error) {
	n, err := syscall.EpollWait(p.ep, p.evs[:min(len(fds), len(p.evs))], timeout)
	if err != nil {
		return 0, err
	}
	k := 0
	for _, ev := range p.evs[:n] {
		if int(ev.Fd) == p.wr {
			var b [64]byte
			for {
				if n, _ := syscall.Read(p.wr, b[:]); n <= 0 {
					break
				}
			}
			continue
		}
		fds[k] = int(ev.Fd)
		k++
	}
	return k, nil
}

// wake makes a wait return.
func (p *poller) wake() {
	var b = [1]byte{0}
	p.ww.Write(b[:])
}

func (p *poller) close() {
	syscall.Close(p.ep)
	syscall.Close(p.wr)
	p.ww.Close()
}
