//go:build unix

// TEMPORARY: stands in for the listeners and rr branches until they land.
package main

import (
	"errors"
	"log/slog"
	"net"
	"os"
	"runtime"
	"syscall"
)

func parseListen(s string) (listenSpec, error) {
	return listenSpec{name: "x", network: "tcp", addr: s, text: s}, nil
}
func parsePort(s string) (listenSpec, error) {
	return listenSpec{name: "tcp-" + s, network: "tcp", addr: ":" + s, text: s}, nil
}
func openListeners(specs []listenSpec, backlog int) ([]*listener, error) {
	var out []*listener
	for _, sp := range specs {
		l, err := net.Listen("tcp", sp.addr)
		if err != nil {
			return nil, err
		}
		f, _ := l.(*net.TCPListener).File()
		fd, _ := syscall.Dup(int(f.Fd()))
		syscall.CloseOnExec(fd)
		out = append(out, &listener{spec: sp, fd: fd})
	}
	return out, nil
}
func openListenersReuseport(specs []listenSpec, backlog int) ([]*listener, error) {
	return nil, errors.New("stub")
}
func (l *listener) reuseportSocket(backlog int) (int, error) { return 0, errors.New("stub") }
func (l *listener) addrString() string                       { return l.spec.addr }
func closeListeners(ls []*listener)                          {}
func adoptSystemd() ([]*listener, error)                     { return nil, nil }
func autoWorkers() int                                       { return runtime.NumCPU() }

var _ = os.Getpid

type dispatcher struct{}

func newDispatcher(lfds []int, window int, log *slog.Logger, onBroken func(id int, err error)) (*dispatcher, error) {
	return nil, errors.New("stub")
}
func (d *dispatcher) attach(id int, fd int)           {}
func (d *dispatcher) ready(id int)                    {}
func (d *dispatcher) drain(id int)                    {}
func (d *dispatcher) detach(id int)                   {}
func (d *dispatcher) close()                          {}
func newHandoffPair() (master, worker int, err error) { return 0, 0, errors.New("stub") }
