//go:build unix

// Command goserver is the small Go HTTP server of the benchmarks: it serves
// through the worker packages, so that it runs under prefork in every mode
// (shared, reuseport, rr) and under bench/barelaunch, and answers
// "w=<slot> pid=<pid>" so that the load client can count requests per worker.
package main

import (
	"log"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/prefork/prefork/worker/httpserve"
)

func main() {
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
	// Serve sends READY=1 once it serves, and drains on SIGTERM.
	if err := httpserve.Serve(srv, 5*time.Second); err != nil {
		log.Fatalf("goserver: %v", err)
	}
}
