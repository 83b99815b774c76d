//go:build linux

// Command refmaster is the reference of the benchmarks for --mode rr: the
// least a master that hands every connection to a worker can cost. It speaks
// the same wire format (README: the rr handoff protocol) in the simplest way, with raw system calls on
// one thread: a blocking accept4, a blocking sendmsg of the descriptor in the
// 8-byte message to the next worker in turn, close. It keeps no copy, counts
// no window and hands nothing on again; one thread per worker reads its acks
// and throws them away (the workers send them, so something has to read them).
//
//	refmaster -addr 127.0.0.1:8080 -n 2 -- ./goserver
//
// With -batch K it measures what the rr handoff protocol would gain from an extension that
// workers opt into, several connections per message: it accepts what is
// queued (up to K, non-blocking, waiting in epoll when none is) and sends them
// to the next worker in ONE message, K 8-byte headers and K descriptors. Only
// bench/cworker reads such messages.
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"

	"github.com/prefork/prefork/internal/rrwire"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "TCP address to bind")
	n := flag.Int("n", 2, "number of workers")
	batch := flag.Int("batch", 1, "connections per message, at most (1: the rr handoff protocol as written)")
	flag.Parse()
	if flag.NArg() == 0 || *n < 1 {
		fmt.Fprintln(os.Stderr, "usage: refmaster [-addr HOST:PORT] [-n N] -- command [args...]")
		os.Exit(2)
	}
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		fatal(err)
	}
	lf, err := l.(*net.TCPListener).File() // a blocking duplicate
	if err != nil {
		fatal(err)
	}
	l.Close()
	lfd := int(lf.Fd())

	chans := make([]int, *n)
	var kids []*exec.Cmd
	for i := range chans {
		master, wend, err := rrwire.NewPair()
		if err != nil {
			fatal(err)
		}
		wf := os.NewFile(uintptr(wend), "handoff")
		c := exec.Command(flag.Arg(0), flag.Args()[1:]...)
		c.Stdout, c.Stderr = os.Stdout, os.Stderr
		c.ExtraFiles = []*os.File{wf}
		c.Env = append(os.Environ(), "PREFORK_MODE=rr", "LISTEN_FDNAMES="+*addr,
			"PREFORK_WORKER="+strconv.Itoa(i), "PREFORK_WORKERS="+strconv.Itoa(*n))
		if err := c.Start(); err != nil {
			fatal(err)
		}
		wf.Close()
		kids = append(kids, c)
		chans[i] = master
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sig
		for _, c := range kids {
			c.Process.Signal(s)
		}
		for _, c := range kids {
			c.Wait()
		}
		os.Exit(0)
	}()

	runtime.LockOSThread()
	if *batch > 1 {
		runBatched(lfd, chans, min(*batch, 64))
	}
	var msg [rrwire.MsgLen]byte
	oob := syscall.UnixRights(0)
	fdAt := syscall.CmsgLen(0)
	buf := make([]byte, 4096)
	next := 0
	for seq := uint32(0); ; seq++ {
		fd, _, e := syscall.Syscall6(syscall.SYS_ACCEPT4, uintptr(lfd), 0, 0, syscall.SOCK_CLOEXEC, 0, 0)
		if e != 0 {
			if e == syscall.EINTR || e == syscall.ECONNABORTED {
				continue
			}
			fatal(os.NewSyscallError("accept4", e))
		}
		rrwire.Put(&msg, seq, 0)
		binary.NativeEndian.PutUint32(oob[fdAt:], uint32(fd))
		for {
			err := syscall.Sendmsg(chans[next], msg[:], oob, nil, syscall.MSG_NOSIGNAL)
			if err != syscall.EINTR {
				if err != nil {
					fatal(os.NewSyscallError("sendmsg", err))
				}
				break
			}
		}
		syscall.Close(int(fd))
		next = (next + 1) % len(chans)
		if seq%32 == 31 {
			for _, ch := range chans {
				discardAcks(ch, buf)
			}
		}
	}
}

// runBatched is the loop of -batch k: every connection queued (up to k) goes
// to one worker in one message; the next batch to the next worker.
func runBatched(lfd int, chans []int, k int) {
	if err := syscall.SetNonblock(lfd, true); err != nil {
		fatal(os.NewSyscallError("fcntl", err))
	}
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		fatal(os.NewSyscallError("epoll_create1", err))
	}
	if err := syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, lfd, &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(lfd)}); err != nil {
		fatal(os.NewSyscallError("epoll_ctl", err))
	}
	evs := make([]syscall.EpollEvent, 1)
	msg := make([]byte, rrwire.MsgLen*k)
	fds := make([]int, 0, k)
	buf := make([]byte, 4096)
	next, sent := 0, 0
	for seq := uint32(0); ; {
		fds = fds[:0]
		for len(fds) < k {
			fd, _, e := syscall.Syscall6(syscall.SYS_ACCEPT4, uintptr(lfd), 0, 0, syscall.SOCK_CLOEXEC, 0, 0)
			if e == syscall.EAGAIN {
				break
			}
			if e == syscall.EINTR || e == syscall.ECONNABORTED {
				continue
			}
			if e != 0 {
				fatal(os.NewSyscallError("accept4", e))
			}
			fds = append(fds, int(fd))
		}
		if len(fds) == 0 {
			if _, err := syscall.EpollWait(ep, evs, -1); err != nil && err != syscall.EINTR {
				fatal(os.NewSyscallError("epoll_wait", err))
			}
			continue
		}
		for i := range fds {
			rrwire.Put((*[rrwire.MsgLen]byte)(msg[rrwire.MsgLen*i:]), seq, 0)
			seq++
		}
		for {
			err := syscall.Sendmsg(chans[next], msg[:rrwire.MsgLen*len(fds)], syscall.UnixRights(fds...), nil, syscall.MSG_NOSIGNAL)
			if err != syscall.EINTR {
				if err != nil {
					fatal(os.NewSyscallError("sendmsg", err))
				}
				break
			}
		}
		for _, fd := range fds {
			syscall.Close(fd)
		}
		next = (next + 1) % len(chans)
		if sent += len(fds); sent >= 32 {
			sent = 0
			for _, ch := range chans {
				discardAcks(ch, buf)
			}
		}
	}
}

// discardAcks reads the acks waiting on a channel, without blocking.
func discardAcks(ch int, buf []byte) {
	for {
		n, _, _, _, err := syscall.Recvmsg(ch, buf, nil, syscall.MSG_DONTWAIT)
		if (err != nil && err != syscall.EINTR) || (err == nil && n == 0) {
			return // nothing more now, or the worker is gone
		}
	}
}

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "refmaster: %v\n", err)
	os.Exit(1)
}
