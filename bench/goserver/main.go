//go:build unix

// Command goserver is the small Go HTTP server of the benchmarks: it takes its
// listeners from the worker package, so that it runs under prefork in every
// mode (shared, reuseport, rr) and under bench/barelaunch, and answers
// "w=<slot> pid=<pid>" so that the load client can count requests per worker.
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/prefork/prefork/worker"
)

func main() {
	ls, err := worker.Listeners()
	if err != nil {
		log.Fatalf("goserver: %v", err)
	}
	slot := os.Getenv("PREFORK_WORKER")
	if slot == "" {
		slot = "-"
	}
	body := []byte("w=" + slot + " pid=" + strconv.Itoa(os.Getpid()) + "\n")
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			w.Write(body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	for _, l := range ls {
		go srv.Serve(l)
	}
	worker.Ready()
	tmpNotify() // TEMPORARY: worker.Ready is a stub until the rr branch lands

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	srv.SetKeepAlivesEnabled(false)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "goserver: %v\n", err)
	}
}

// tmpNotify sends READY=1 itself while worker.Ready is a stub. TEMPORARY.
func tmpNotify() {
	if name := os.Getenv("NOTIFY_SOCKET"); name != "" {
		if c, err := net.Dial("unixgram", name); err == nil {
			c.Write([]byte("READY=1"))
			c.Close()
		}
	}
}
