// This file holds the package's examples.
package worker_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prefork/prefork/worker"
)

// A Go HTTP worker for every prefork mode, which drains on SIGTERM without
// dropping requests: answers to requests in flight carry "Connection: close",
// so that keep-alive clients do not send another request on a connection that
// is about to close, and Shutdown waits for them.
func Example() {
	ls, err := worker.Listeners()
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from worker %d, pid %d\n", worker.Slot(), os.Getpid())
	})}
	for _, l := range ls {
		go srv.Serve(l)
	}
	worker.Ready() // counts with prefork --ready notify

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	srv.SetKeepAlivesEnabled(false)                                          // in-flight answers say Connection: close
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second) // under prefork's --grace
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Print(err)
	}
}
