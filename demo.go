//go:build unix

// This file holds the built-in demo worker (--demo): a tiny HTTP server that
// answers with its worker number and pid, in every mode, and stops gracefully.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	pw "github.com/prefork/prefork/worker"
)

const demoWorkerArg = "--demo-worker"

func runDemoWorker() int {
	ls, err := pw.Listeners()
	if err != nil {
		fmt.Fprintf(os.Stderr, "prefork demo: %v\n", err)
		return 1
	}
	slot, gen := os.Getenv("PREFORK_WORKER"), os.Getenv("PREFORK_GENERATION")
	pid := os.Getpid()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from prefork worker %s (pid %d, generation %s)\n", slot, pid, gen)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	var wg sync.WaitGroup
	for _, l := range ls {
		wg.Add(1)
		go func(l net.Listener) {
			defer wg.Done()
			srv.Serve(l)
		}(l)
	}
	pw.Ready()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	// Draining: answer with Connection: close and let in-flight requests finish.
	pw.Stopping()
	srv.SetKeepAlivesEnabled(false)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	// Serve may have accepted a connection that Shutdown did not see yet: wait
	// for every Serve to return, then for that connection too.
	wg.Wait()
	srv.Shutdown(ctx)
	return 0
}
