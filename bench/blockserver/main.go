//go:build linux || darwin

// Command blockserver is the blocking worker of the pool benchmark: like a C
// accept loop or a synchronous Python server, it takes one connection at a
// time with a blocking accept on fd 3 (prefork's shared or reuseport socket),
// reads the request, waits -delay (the time a request spends on I/O), answers
// "pid=<pid>" and closes. It sends READY=1 once it accepts and, on SIGTERM,
// finishes the request in hand and exits.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	pw "github.com/prefork/prefork/worker"
)

func main() {
	delay := flag.Duration("delay", 50*time.Millisecond, "time each request takes")
	flag.Parse()
	// A blocking accept is not interrupted by a signal Go handles: a receive
	// timeout on the socket lets the loop look at the stop flag 10 times a second.
	tv := syscall.Timeval{Usec: 100000}
	if err := syscall.SetsockoptTimeval(3, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		fmt.Fprintln(os.Stderr, "blockserver: fd 3 is not a socket:", err)
		os.Exit(3)
	}
	var stop atomic.Bool
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sigs; stop.Store(true) }()
	body := "pid=" + strconv.Itoa(os.Getpid()) + "\n"
	answer := []byte(fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body))
	pw.Ready()
	buf := make([]byte, 8192)
	for !stop.Load() {
		fd, _, err := syscall.Accept(3)
		switch err {
		case nil:
		case syscall.EAGAIN, syscall.EINTR, syscall.ECONNABORTED:
			continue
		default:
			fmt.Fprintln(os.Stderr, "blockserver: accept:", err)
			os.Exit(3)
		}
		// The accepted socket inherits the listener's receive timeout: clear it.
		syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &syscall.Timeval{})
		var req []byte
		for !strings.Contains(string(req), "\r\n\r\n") && len(req) < 1<<16 {
			n, err := syscall.Read(fd, buf)
			if err != nil || n <= 0 {
				break
			}
			req = append(req, buf[:n]...)
		}
		time.Sleep(*delay)
		syscall.Write(fd, answer)
		syscall.Close(fd)
	}
}
