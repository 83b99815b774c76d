//go:build linux || darwin

// Package demo is the built-in demo worker (prefork --demo): a tiny HTTP/1.1
// server that answers every request with its worker number and pid, in every
// mode, and on SIGTERM drains without dropping a request. It is written on
// package net alone so that prefork itself does not link net/http (and stays
// small in memory). prefork runs it as its own binary with Arg.
package demo

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	pw "github.com/prefork/prefork/worker"
)

// Arg, as the first argument, makes prefork's binary the demo worker.
const Arg = "--demo-worker"

// demoServer serves the demo answer; draining makes every answer close its
// connection and idle connections close after a short linger.
type demoServer struct {
	body     string
	draining atomic.Bool
	conns    sync.WaitGroup
	mu       sync.Mutex
	idle     map[net.Conn]bool // connections waiting for their next request
}

// Run serves as the demo worker and returns its exit status.
func Run() int {
	ls, err := pw.Listeners()
	if err != nil {
		fmt.Fprintf(os.Stderr, "prefork demo: %v\n", err)
		return 1
	}
	s := &demoServer{idle: map[net.Conn]bool{},
		body: fmt.Sprintf("hello from prefork worker %s (pid %d, generation %s)\n",
			os.Getenv("PREFORK_WORKER"), os.Getpid(), os.Getenv("PREFORK_GENERATION"))}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	var accepting sync.WaitGroup
	for _, l := range ls {
		accepting.Add(1)
		go func(l net.Listener) {
			defer accepting.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				s.conns.Add(1)
				go s.serve(c)
			}
		}(l)
	}
	pw.Ready()
	<-stop
	// Drain: stop accepting (queued connections go to the other workers), then
	// let every accepted connection get its answers, with "Connection: close".
	s.draining.Store(true)
	for _, l := range ls {
		l.Close()
	}
	accepting.Wait()
	s.mu.Lock()
	for c := range s.idle {
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond)) // a request already on its way still gets its answer
	}
	s.mu.Unlock()
	s.conns.Wait()
	return 0
}

func (s *demoServer) setIdle(c net.Conn, idle bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if idle {
		s.idle[c] = true
		if s.draining.Load() {
			c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		}
	} else {
		delete(s.idle, c)
	}
}

// serve answers the requests of one connection until the client or a drain closes it.
func (s *demoServer) serve(c net.Conn) {
	defer s.conns.Done()
	defer c.Close()
	defer s.setIdle(c, false)
	r := bufio.NewReader(c)
	for {
		s.setIdle(c, true)
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		s.setIdle(c, false)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		keepAlive := strings.HasSuffix(strings.TrimSpace(line), "HTTP/1.1")
		length := 0
		for {
			h, err := r.ReadString('\n')
			if err != nil {
				return
			}
			h = strings.TrimSpace(h)
			if h == "" {
				break
			}
			k, v, _ := strings.Cut(h, ":")
			switch strings.ToLower(strings.TrimSpace(k)) {
			case "connection":
				v = strings.ToLower(strings.TrimSpace(v))
				keepAlive = v == "keep-alive" || keepAlive && v != "close"
			case "content-length":
				length, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		if _, err := r.Discard(length); err != nil {
			return
		}
		c.SetReadDeadline(time.Time{})
		keepAlive = keepAlive && !s.draining.Load()
		conn := "keep-alive"
		if !keepAlive {
			conn = "close"
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n%s",
			len(s.body), conn, s.body)
		if !keepAlive {
			return
		}
	}
}
