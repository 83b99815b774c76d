//go:build unix

// This file holds the built-in demo worker (--demo): a tiny HTTP server that
// answers with its worker number and pid, in every mode, and stops gracefully.
package main

import (
	"fmt"
	"net/http"
	"os"
	"time"

	pw "github.com/prefork/prefork/worker"
)

const demoWorkerArg = "--demo-worker"

func runDemoWorker() int {
	slot, gen := os.Getenv("PREFORK_WORKER"), os.Getenv("PREFORK_GENERATION")
	pid := os.Getpid()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from prefork worker %s (pid %d, generation %s)\n", slot, pid, gen)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	// ServeHTTP sends READY=1 and, on SIGTERM, drains without dropping a request.
	if err := pw.ServeHTTP(srv, 0); err != nil {
		fmt.Fprintf(os.Stderr, "prefork demo: %v\n", err)
		return 1
	}
	return 0
}
