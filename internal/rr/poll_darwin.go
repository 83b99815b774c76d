// This file holds the dispatcher's readiness poller on macOS: a kqueue of
// its own, waited on by one locked thread in a blocking kevent, and a pipe to
// wake it.
package rr

import (
	"os"
	"syscall"
)

// poller watches the dispatcher's descriptors for reading.
type poller struct {
	kq  int
	wr  int      // wake pipe: read end in the queue
	ww  *os.File // write end for wake; an os.File, so that a wake racing close cannot write a reused number
	evs []syscall.Kevent_t
}

func newPoller() (*poller, error) {
	syscall.ForkLock.RLock()
	kq, err := syscall.Kqueue()
	if err == nil {
		syscall.CloseOnExec(kq)
	}
	var p [2]int
	perr := syscall.Pipe(p[:])
	if perr == nil {
		syscall.CloseOnExec(p[0])
		syscall.CloseOnExec(p[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil || perr != nil {
		if err == nil {
			syscall.Close(kq)
			return nil, os.NewSyscallError("pipe", perr)
		}
		if perr == nil {
			syscall.Close(p[0])
			syscall.Close(p[1])
		}
		return nil, os.NewSyscallError("kqueue", err)
	}
	// The write end stays blocking, so that os.File leaves it out of the
	// runtime's poller; a wake is one byte per loop turn.
	syscall.SetNonblock(p[0], true)
	pl := &poller{kq: kq, wr: p[0], ww: os.NewFile(uintptr(p[1]), "rr-wake"), evs: make([]syscall.Kevent_t, 64)}
	if err := pl.add(pl.wr, true); err != nil {
		pl.close()
		return nil, err
	}
	return pl, nil
}

func (p *poller) change(fd int, flags int) error {
	var k [1]syscall.Kevent_t
	syscall.SetKevent(&k[0], fd, syscall.EVFILT_READ, flags)
	_, err := syscall.Kevent(p.kq, k[:], nil, nil)
	return os.NewSyscallError("kevent", err)
}

func kqFlags(read bool) int {
	if read {
		return syscall.EV_ADD | syscall.EV_ENABLE
	}
	return syscall.EV_ADD | syscall.EV_DISABLE
}

// add watches fd, for reading if read (level-triggered).
func (p *poller) add(fd int, read bool) error { return p.change(fd, kqFlags(read)) }

// set turns watching fd for reading on or off.
func (p *poller) set(fd int, read bool) error { return p.change(fd, kqFlags(read)) }

// del stops watching fd.
func (p *poller) del(fd int) { p.change(fd, syscall.EV_DELETE) }

// wait blocks until descriptors are ready, or for timeout milliseconds unless
// it is negative, and writes them to fds; the wake pipe is drained and not
// reported.
func (p *poller) wait(fds []int, timeout int) (int, error) {
	var ts *syscall.Timespec
	if timeout >= 0 {
		t := syscall.NsecToTimespec(int64(timeout) * 1e6)
		ts = &t
	}
	n, err := syscall.Kevent(p.kq, nil, p.evs[:min(len(fds), len(p.evs))], ts)
	if err != nil {
		return 0, err
	}
	k := 0
	for _, ev := range p.evs[:n] {
		if int(ev.Ident) == p.wr {
			var b [64]byte
			for {
				if n, _ := syscall.Read(p.wr, b[:]); n <= 0 {
					break
				}
			}
			continue
		}
		fds[k] = int(ev.Ident)
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
	syscall.Close(p.kq)
	syscall.Close(p.wr)
	p.ww.Close()
}
