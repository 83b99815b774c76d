//go:build unix

// Command bootserver is a release that takes long to boot and never says
// READY=1, as most servers: it sleeps BOOT (a Go duration, default 3s), then
// serves HTTP through the worker packages (httpserve, which drains on TERM),
// answering "w=<slot> pid=<pid>", with its NOTIFY_SOCKET removed so that it
// says nothing. While it serves, MARKS/serving.<pid> exists: bench/readiness.sh
// counts them, the workers that really serve.
package main

import (
	"log"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/prefork/prefork/worker/httpserve"
)

func main() {
	os.Unsetenv("NOTIFY_SOCKET")
	boot, err := time.ParseDuration(os.Getenv("BOOT"))
	if err != nil {
		boot = 3 * time.Second
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	select {
	case <-time.After(boot):
	case <-term:
		return
	}
	body := []byte("w=" + os.Getenv("PREFORK_WORKER") + " pid=" + strconv.Itoa(os.Getpid()) + "\n")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) })}
	if d := os.Getenv("MARKS"); d != "" {
		mark := filepath.Join(d, "serving."+strconv.Itoa(os.Getpid()))
		os.WriteFile(mark, nil, 0o644)
		go func() {
			<-term // httpserve drains on it too
			os.Remove(mark)
		}()
	}
	if err := httpserve.Serve(srv, 5*time.Second); err != nil {
		log.Fatalf("bootserver: %v", err)
	}
}
