//go:build unix

// Package worker is the Go side of prefork: it turns the sockets a worker
// inherits into net.Listeners, in every mode, and speaks sd_notify.
//
//	ls, err := worker.Listeners()
//	...
//	go srv.Serve(ls[0])
//	worker.Ready() // with prefork --ready notify
//
// In shared and reuseport mode the listeners come from LISTEN_FDS and
// LISTEN_PID as systemd passes them (so the package works under systemd socket
// activation too); in rr mode (PREFORK_MODE=rr) fd 3 is prefork's handoff
// socket and a background reader queues each connection on the listener of its
// index; Accept acks it as it returns it, before anything is read, as a *Conn
// (not a *net.TCPConn: see Conn for why and what it offers). Closing every
// listener stops the reader and closes fd 3; connections prefork sent that were
// not accepted (so not acked) yet then go to another worker.
//
// Datagram sockets (prefork -l udp:...) are not listeners: Listeners skips them
// and PacketConns returns them, each in prefork's order.
//
// The package builds on every Unix system; rr mode needs Linux or macOS, as
// prefork does, and Listeners returns an error for it elsewhere.
//
// # Mixing Go and C workers in shared mode
//
// Go's net.FileListener makes the socket non-blocking, and O_NONBLOCK lives on
// the open file description, which every worker of a shared listener shares.
// Once one Go worker has called Listeners, a C worker beside it that calls a
// blocking accept(3, ...) gets EAGAIN when no connection is queued, and must
// poll, or be told to. Workers that are all Go programs, or all servers built
// on an event loop, are not affected; --mode reuseport and --mode rr give each
// worker sockets of its own.
//
// # Draining without dropping requests
//
// On prefork's stop signal (SIGTERM by default), a worker should stop accepting,
// answer the requests in flight with "Connection: close" so that keep-alive
// clients do not send another request on a connection about to close, and
// exit. For net/http that is SetKeepAlivesEnabled(false) followed by Shutdown:
// see the example.
package worker

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// firstFD is where inherited sockets start, as with systemd.
const firstFD = 3

var inherited struct {
	once sync.Once
	ls   []net.Listener
	pcs  []net.PacketConn
	err  error
}

// inherit takes over the inherited sockets once per process and unsets
// LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES, so that a program this worker runs
// does not take them for its own.
func inherit() {
	inherited.once.Do(func() {
		inherited.ls, inherited.pcs, inherited.err = fromEnv(os.Getenv, os.Getpid())
		for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
			os.Unsetenv(v)
		}
	})
}

// Listeners returns one net.Listener per stream socket prefork passed (TCP or
// unix), in prefork's order, in every mode. The first call takes the sockets
// over; later calls return the same listeners. It fails when the process was
// not started by prefork (or by systemd socket activation).
func Listeners() ([]net.Listener, error) {
	inherit()
	return inherited.ls, inherited.err
}

// PacketConns returns one net.PacketConn per datagram socket prefork passed
// (-l udp:...), in prefork's order. rr mode has none.
func PacketConns() ([]net.PacketConn, error) {
	inherit()
	return inherited.pcs, inherited.err
}

// fromEnv builds the listeners from an environment.
func fromEnv(getenv func(string) string, pid int) ([]net.Listener, []net.PacketConn, error) {
	names := strings.Split(getenv("LISTEN_FDNAMES"), ":")
	if getenv("PREFORK_MODE") == "rr" {
		if getenv("LISTEN_FDNAMES") == "" {
			return nil, nil, errors.New("worker: PREFORK_MODE=rr but LISTEN_FDNAMES is unset: it names one listener each")
		}
		ls, err := newHandoff(firstFD, names)
		return ls, nil, err
	}
	fds, lpid := getenv("LISTEN_FDS"), getenv("LISTEN_PID")
	if fds == "" {
		return nil, nil, errors.New("worker: not started by prefork: neither LISTEN_FDS nor PREFORK_MODE=rr is set")
	}
	if lpid != strconv.Itoa(pid) {
		return nil, nil, fmt.Errorf("worker: LISTEN_PID is %q, not this process (%d): the sockets are someone else's", lpid, pid)
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 0 {
		return nil, nil, fmt.Errorf("worker: bad LISTEN_FDS %q", fds)
	}
	var (
		ls  []net.Listener
		pcs []net.PacketConn
	)
	fail := func(err error) ([]net.Listener, []net.PacketConn, error) {
		for _, l := range ls {
			l.Close()
		}
		for _, pc := range pcs {
			pc.Close()
		}
		return nil, nil, err
	}
	for i := 0; i < n; i++ {
		fd := firstFD + i
		name := fmt.Sprintf("LISTEN_FD_%d", fd)
		if i < len(names) && names[i] != "" {
			name = names[i]
		}
		typ, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TYPE)
		if err != nil {
			return fail(fmt.Errorf("worker: fd %d (%s): %w", fd, name, os.NewSyscallError("getsockopt", err)))
		}
		f := os.NewFile(uintptr(fd), name)
		if typ == syscall.SOCK_DGRAM {
			pc, err := net.FilePacketConn(f)
			f.Close()
			if err != nil {
				return fail(fmt.Errorf("worker: fd %d (%s): %w", fd, name, err))
			}
			pcs = append(pcs, pc)
			continue
		}
		l, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return fail(fmt.Errorf("worker: fd %d (%s): %w", fd, name, err))
		}
		ls = append(ls, l)
	}
	return ls, pcs, nil
}

// Slot returns this worker's slot number (PREFORK_WORKER, 0 to N-1, stable
// across restarts of the slot), or -1 when it is not set.
func Slot() int {
	return envInt("PREFORK_WORKER", -1)
}

// Generation returns PREFORK_GENERATION: 1 at start, one more at every reload;
// 0 when it is not set.
func Generation() int {
	return envInt("PREFORK_GENERATION", 0)
}

func envInt(name string, unset int) int {
	n, err := strconv.Atoi(os.Getenv(name))
	if err != nil {
		return unset
	}
	return n
}
