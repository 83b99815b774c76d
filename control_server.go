//go:build linux || darwin

// This file holds the control socket's server: a unix stream socket, mode
// 0600, that serves peers of prefork's own uid or root only (their credentials
// are checked, not just the file mode). One goroutine per client reads one
// JSON request line under a deadline and hands it to the supervisor's owner
// goroutine as a ctlEvent (control.go), then writes the answer.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/prefork/prefork/internal/sock"
	"io"
	"log/slog"
	"net"
	"os"
	"time"
)

const (
	ctlRequestTimeout = 5 * time.Second // a client must send its request this soon
	ctlWriteTimeout   = 5 * time.Second // and read the answer this soon
	ctlMaxClients     = 64              // served at once; more are told to retry
	ctlMaxRequest     = 64 << 10
	ctlServerName     = "prefork" // every answer carries it: a client knows it reached prefork
)

// ctlServer accepts and serves control clients.
type ctlServer struct {
	sock   *sock.Listener // the socket file, removed on close
	ln     net.Listener
	uid    int
	events chan<- any
	log    *slog.Logger
	quit   chan struct{}
	sem    chan struct{}

	lastRefusal time.Time // the accept loop's: when a refusal was last logged
}

// openControl serves the control socket at path: a stale socket file there is
// replaced, a live one is an error, as for the unix listeners.
func openControl(path string, events chan<- any, log *slog.Logger) (*ctlServer, error) {
	l, err := sock.BindUnix(sock.Spec{Name: "control", Network: "unix", Addr: path, Text: path}, ctlMaxClients)
	if err != nil {
		return nil, fmt.Errorf("--control %s: %w", path, err)
	}
	if l.Path() != "" {
		// The peer check is what keeps others out; the mode says so to a reader.
		if err := os.Chmod(path, 0o600); err != nil {
			sock.Close(l)
			return nil, fmt.Errorf("--control %s: %w", path, err)
		}
	}
	f := os.NewFile(uintptr(l.FD), path)
	ln, err := net.FileListener(f) // a close-on-exec duplicate in Go's poller
	f.Close()
	l.FD = -1
	if err != nil {
		sock.Close(l)
		return nil, fmt.Errorf("--control %s: %w", path, err)
	}
	c := &ctlServer{sock: l, ln: ln, uid: os.Getuid(), events: events, log: log,
		quit: make(chan struct{}), sem: make(chan struct{}, ctlMaxClients)}
	go c.serve()
	return c, nil
}

// close stops accepting and removes the socket file; clients still connected
// see their connection close when prefork exits.
func (c *ctlServer) close() {
	if c == nil {
		return
	}
	c.ln.Close()
	sock.Close(c.sock)
	close(c.quit) // then waiting clients (stop) see their connection close
}

func (c *ctlServer) serve() {
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			c.log.Warn("control socket: accept failed", "err", err) // EMFILE and the like
			select {
			case <-c.quit:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		select {
		case c.sem <- struct{}{}:
			go func() {
				defer func() { <-c.sem }()
				c.client(conn.(*net.UnixConn))
			}()
		default:
			if now := time.Now(); now.Sub(c.lastRefusal) > time.Minute { // once a minute at most
				c.log.Warn("control socket: too many clients at once; refusing them", "max", ctlMaxClients)
				c.lastRefusal = now
			}
			go func() {
				defer conn.Close()
				c.answer(conn, ctlResponse{Error: "too many control clients at once; try again"})
			}()
		}
	}
}

// answer writes one response line, bounded in time.
func (c *ctlServer) answer(conn net.Conn, r ctlResponse) error {
	r.Server = ctlServerName
	b, _ := json.Marshal(r)
	conn.SetWriteDeadline(time.Now().Add(ctlWriteTimeout))
	_, err := conn.Write(append(b, '\n'))
	return err
}

// client serves one connection: check the peer, read one request, hand it to
// the owner goroutine and write its answer.
func (c *ctlServer) client(conn *net.UnixConn) {
	defer conn.Close()
	uid, err := connPeerUID(conn)
	if err != nil {
		c.log.Warn("control socket: cannot read the peer's credentials; closing", "err", err)
		return
	}
	if uid != c.uid && uid != 0 {
		c.log.Warn("control socket: refused a client of another user", "uid", uid)
		c.answer(conn, ctlResponse{Error: fmt.Sprintf("permission denied: uid %d is neither prefork's (%d) nor root", uid, c.uid)})
		return
	}
	conn.SetReadDeadline(time.Now().Add(ctlRequestTimeout))
	line, err := bufio.NewReader(io.LimitReader(conn, ctlMaxRequest)).ReadBytes('\n')
	if err != nil && !(errors.Is(err, io.EOF) && len(line) > 0) {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			c.log.Debug("control socket: a client sent no request in time; closing", "timeout", ctlRequestTimeout)
			c.answer(conn, ctlResponse{Error: fmt.Sprintf("no request within %v", ctlRequestTimeout)})
		}
		return
	}
	conn.SetReadDeadline(time.Time{})
	if len(line) >= ctlMaxRequest && line[len(line)-1] != '\n' {
		c.answer(conn, ctlResponse{Error: fmt.Sprintf("request too long (more than %d bytes)", ctlMaxRequest)})
		return
	}
	var req ctlRequest
	if err := json.Unmarshal(line, &req); err != nil {
		c.answer(conn, ctlResponse{Error: "malformed request: " + err.Error()})
		return
	}
	switch req.Cmd {
	case "status", "metrics", "reload", "scale", "stop":
	default:
		c.answer(conn, ctlResponse{Error: fmt.Sprintf("unknown command %q", req.Cmd)})
		return
	}
	c.log.Debug("control request", "cmd", req.Cmd)
	// The client may hang up while it waits (a reload can take minutes): notice.
	gone := make(chan struct{})
	go func() {
		io.Copy(io.Discard, conn)
		close(gone)
	}()
	reply := make(chan ctlResponse, 1)
	select {
	case c.events <- ctlEvent{req, reply}:
	case <-c.quit:
		return
	case <-gone:
		return
	}
	var r ctlResponse
	select {
	case r = <-reply:
	case <-c.quit:
		return
	case <-gone:
		return
	}
	if r.Status != nil {
		sampleUsage(r.Status)
		if req.Cmd == "metrics" {
			r.Metrics, r.Status = string(renderMetrics(r.Status)), nil
		}
	}
	if c.answer(conn, r) != nil || req.Cmd != "stop" || !r.OK {
		return
	}
	// stop: the connection stays open until prefork exits, so the client can
	// wait for that.
	select {
	case <-gone:
	case <-c.quit:
	}
}

// connPeerUID reads the uid of a connection's peer.
func connPeerUID(conn *net.UnixConn) (int, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return -1, err
	}
	uid, perr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) { uid, perr = peerUID(int(fd)) }); err != nil {
		return -1, err
	}
	return uid, perr
}
