//go:build unix

// Command barelaunch is the no-supervisor baseline of the benchmarks: it binds
// one TCP socket, starts N copies of a command with that socket at fd 3 (as
// prefork's shared mode does, with LISTEN_FDS=1 and each child's own
// LISTEN_PID), and then only waits. It restarts nothing and handles nothing but
// TERM/INT, which it passes on.
//
//	barelaunch -addr 127.0.0.1:8080 -n 2 -- ./goserver
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
)

// execArg makes barelaunch play the per-child exec step: set LISTEN_PID to its
// own pid, then exec the command, keeping the pid.
const execArg = "--barelaunch-exec"

func main() {
	if len(os.Args) > 2 && os.Args[1] == execArg {
		os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
		path, err := exec.LookPath(os.Args[2])
		if err == nil {
			err = syscall.Exec(path, os.Args[2:], os.Environ())
		}
		fmt.Fprintf(os.Stderr, "barelaunch: exec %s: %v\n", os.Args[2], err)
		os.Exit(127)
	}
	addr := flag.String("addr", "127.0.0.1:8080", "TCP address to bind")
	n := flag.Int("n", 2, "number of copies")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: barelaunch [-addr HOST:PORT] [-n N] -- command [args...]")
		os.Exit(2)
	}
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "barelaunch: %v\n", err)
		os.Exit(1)
	}
	f, err := l.(*net.TCPListener).File() // a dup in blocking mode, as prefork passes it
	if err != nil {
		fmt.Fprintf(os.Stderr, "barelaunch: %v\n", err)
		os.Exit(1)
	}
	l.Close()
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "barelaunch: %v\n", err)
		os.Exit(1)
	}
	var kids []*exec.Cmd
	for i := 0; i < *n; i++ {
		c := exec.Command(self, append([]string{execArg}, flag.Args()...)...)
		c.Stdout, c.Stderr = os.Stdout, os.Stderr
		c.ExtraFiles = []*os.File{f}
		c.Env = append(os.Environ(), "LISTEN_FDS=1", "PREFORK_WORKER="+strconv.Itoa(i), "PREFORK_WORKERS="+strconv.Itoa(*n))
		if err := c.Start(); err != nil {
			fmt.Fprintf(os.Stderr, "barelaunch: %v\n", err)
			os.Exit(1)
		}
		kids = append(kids, c)
	}
	f.Close()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	done := make(chan struct{})
	go func() {
		for _, c := range kids {
			c.Wait()
		}
		close(done)
	}()
	select {
	case s := <-sig:
		for _, c := range kids {
			c.Process.Signal(s)
		}
		<-done
	case <-done:
	}
}
