//go:build unix

// Package httpserve runs an http.Server as a prefork worker, in every mode, with
// a drain on the stop signal that drops no request. It is a package of its own so
// that programs using only package worker do not link net/http.
//
//	srv := &http.Server{Handler: mux}
//	if err := httpserve.Serve(srv, 0); err != nil {
//		log.Fatal(err)
//	}
package httpserve

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/prefork/prefork/worker"
)

// Serve serves srv on every listener prefork passed, sends READY=1, and on
// SIGTERM or SIGINT drains and returns nil.
//
// The drain drops no request: it answers with "Connection: close" from then on,
// closes the listeners (the connections still queued on a shared socket go to
// the other workers), waits until every accepted connection has been answered,
// and only then calls Shutdown to close idle keep-alive connections.
// (http.Server.Shutdown alone drops a request that it reads after it began,
// and it can miss a connection that Serve accepted a moment before.)
// grace bounds the drain; 0 means 25 seconds, under prefork's default --grace.
func Serve(srv *http.Server, grace time.Duration) error {
	ls, err := worker.Listeners()
	if err != nil {
		return err
	}
	if grace <= 0 {
		grace = 25 * time.Second
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(stop)

	busy := trackBusy(srv)
	var serving sync.WaitGroup
	errc := make(chan error, len(ls))
	for _, l := range ls {
		serving.Add(1)
		go func(l net.Listener) {
			defer serving.Done()
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				errc <- err
			}
		}(l)
	}
	worker.Ready()
	select {
	case <-stop:
	case err := <-errc:
		return err
	}
	srv.SetKeepAlivesEnabled(false)
	for _, l := range ls {
		l.Close()
	}
	serving.Wait() // every accepted connection is now known to busy
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	busy.wait(ctx)
	return srv.Shutdown(ctx)
}

// busyConns tracks connections that were accepted and not yet answered,
// through the server's ConnState hook.
type busyConns struct {
	mu    sync.Mutex
	state map[net.Conn]connState
}

type connState struct {
	st    http.ConnState
	since time.Time
}

// newGrace is how long a connection that sent nothing yet is waited for, as
// net/http itself treats a new connection as idle after 5 seconds.
const newGrace = 5 * time.Second

func trackBusy(srv *http.Server) *busyConns {
	b := &busyConns{state: map[net.Conn]connState{}}
	prev := srv.ConnState
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		b.mu.Lock()
		if st == http.StateNew || st == http.StateActive {
			b.state[c] = connState{st, time.Now()}
		} else {
			delete(b.state, c)
		}
		b.mu.Unlock()
		if prev != nil {
			prev(c, st)
		}
	}
	return b
}

func (b *busyConns) busy() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, cs := range b.state {
		if cs.st == http.StateActive || time.Since(cs.since) < newGrace {
			return true
		}
	}
	return false
}

// wait returns once no connection is active or newly accepted, or when ctx ends.
func (b *busyConns) wait(ctx context.Context) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for b.busy() {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}
