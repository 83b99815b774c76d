//go:build linux

// This file holds the suite's accounting worker: an HTTP worker for every mode
// that writes down each connection it takes (the client's port and the time)
// before it takes it: in shared and reuseport mode when accept returns, in rr
// mode before it sends prefork the ack. When a worker is killed, a failed
// connection found in no worker's record never reached a worker: in rr mode,
// one that prefork lost although no worker had acked it.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/prefork/prefork/internal/rrwire"
	pw "github.com/prefork/prefork/worker"
)

const roleEnv = "RELIABILITY_ROLE" // "ackworker": the suite binary plays the worker

// takenLog appends "PORT UNIXNANO" lines to DIR/taken.PID, one write each, so
// that a line is on record even if the worker is killed right after.
type takenLog struct{ f *os.File }

func (t takenLog) note(remote net.Addr) {
	port := 0
	if a, ok := remote.(*net.TCPAddr); ok {
		port = a.Port
	}
	fmt.Fprintf(t.f, "%d %d\n", port, time.Now().UnixNano())
}

// loggingListener records every connection Accept returns.
type loggingListener struct {
	net.Listener
	log takenLog
}

func (l loggingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.log.note(c.RemoteAddr())
	}
	return c, err
}

// chanListener is a net.Listener fed by the rr handoff reader.
type chanListener struct {
	conns chan net.Conn
	addr  net.Addr
}

func (l chanListener) Accept() (net.Conn, error) {
	c, ok := <-l.conns
	if !ok {
		return nil, net.ErrClosed
	}
	return c, nil
}
func (l chanListener) Close() error   { return nil }
func (l chanListener) Addr() net.Addr { return l.addr }

func runAckWorker() int {
	dir := os.Getenv("RELIABILITY_DIR")
	f, err := os.OpenFile(filepath.Join(dir, "taken."+strconv.Itoa(os.Getpid())), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ackworker:", err)
		return 1
	}
	log := takenLog{f}
	pid := os.Getpid()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "ackworker pid %d\n", pid)
	})}
	var ls []net.Listener
	if os.Getenv("PREFORK_MODE") == "rr" {
		l := chanListener{conns: make(chan net.Conn, 64), addr: &net.TCPAddr{}}
		go handoff(3, log, l.conns)
		ls = []net.Listener{l}
	} else {
		inherited, err := pw.Listeners()
		if err != nil {
			fmt.Fprintln(os.Stderr, "ackworker:", err)
			return 1
		}
		for _, l := range inherited {
			ls = append(ls, loggingListener{l, log})
		}
	}
	for _, l := range ls {
		go srv.Serve(l)
	}
	pw.Ready()
	select {} // the suite only ever kills this worker, or prefork stops it with SIGTERM
}

// handoff speaks prefork's rr protocol (README: The rr handoff protocol) one message at a time:
// receive a connection, write it down, ack it, serve it.
func handoff(fd int, log takenLog, conns chan<- net.Conn) {
	buf := make([]byte, 2*rrwire.MsgLen)
	oob := make([]byte, rrwire.OOBSpace)
	var ack [rrwire.AckLen]byte
	for {
		n, oobn, flags, err := rrwire.Recv(fd, buf, oob, false)
		if err != nil {
			os.Exit(0) // prefork closed the channel
		}
		seq, _, cfd, err := rrwire.Parse(buf[:n], oob[:oobn], flags)
		if err == rrwire.ErrClosed {
			os.Exit(0)
		}
		if err != nil {
			os.Exit(2)
		}
		file := os.NewFile(uintptr(cfd), "conn")
		c, err := net.FileConn(file)
		file.Close()
		if err != nil {
			os.Exit(2)
		}
		log.note(c.RemoteAddr()) // on record before prefork counts it as taken
		rrwire.PutAck(ack[:], seq)
		if err := rrwire.SendAcks(fd, ack[:]); err != nil {
			os.Exit(0)
		}
		conns <- c
	}
}
