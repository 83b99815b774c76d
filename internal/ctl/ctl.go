//go:build linux || darwin

// Package ctl serves prefork's control socket: a unix stream socket, mode
// 0600, that admits peers of prefork's own uid or root only (their
// credentials are checked, not just the file mode), one goroutine per client,
// at most MaxClients at once. A client sends one request line and reads one
// answer line; what the request means is the caller's (Config.Handle).
package ctl

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/prefork/prefork/internal/sock"
)

const (
	RequestTimeout = 5 * time.Second // a client must send its request this soon
	WriteTimeout   = 5 * time.Second // and read the answer this soon
	MaxClients     = 64              // served at once; more are told to retry
	MaxRequest     = 64 << 10        // bytes in a request line
)

// Config is what a server needs from its caller.
type Config struct {
	Path string
	Log  *slog.Logger
	// Handle answers one request line (without its newline) in the client's
	// goroutine. stay keeps the connection open after the answer until Close
	// (stop: the client waits for prefork to exit). quit closes at Close.
	// conn is the client's connection, for a handler that hands it on (an
	// upgrade's new image answers on it).
	Handle func(line []byte, conn syscall.Conn, quit <-chan struct{}) (answer []byte, stay bool)
	// Refuse renders an answer the server gives on its own (permission
	// denied, too many clients, no request in time, request too long).
	Refuse func(msg string) []byte
	// Inherited, when set, is the socket to serve instead of binding Path:
	// one an earlier image of prefork bound (an in-place upgrade).
	Inherited *sock.Listener
}

// Server accepts and serves control clients.
type Server struct {
	c    Config
	sock *sock.Listener // the socket file, removed on close
	ln   net.Listener
	uid  int
	quit chan struct{}
	sem  chan struct{}
	once sync.Once

	lastRefusal time.Time // the accept loop's: when a refusal was last logged
}

// Open serves the control socket at c.Path: a stale socket file there is
// replaced, a live one is an error, as for the unix listeners.
func Open(c Config) (*Server, error) {
	l, err := c.Inherited, error(nil)
	if l == nil {
		if l, err = sock.BindUnix(sock.Spec{Name: "control", Network: "unix", Addr: c.Path, Text: c.Path}, MaxClients); err != nil {
			return nil, err
		}
	}
	if l.Path() != "" && c.Inherited == nil {
		// The peer check is what keeps others out; the mode says so to a reader.
		if err := os.Chmod(c.Path, 0o600); err != nil {
			sock.Close(l)
			return nil, err
		}
	}
	fd := l.FD
	if c.Inherited != nil { // the inherited descriptor stays open, for a way back
		if fd, err = syscall.Dup(fd); err != nil {
			return nil, os.NewSyscallError("dup", err)
		}
	}
	f := os.NewFile(uintptr(fd), c.Path)
	ln, err := net.FileListener(f) // a close-on-exec duplicate in Go's poller
	f.Close()
	l.FD = -1
	if err != nil {
		sock.Close(l)
		return nil, err
	}
	s := &Server{c: c, sock: l, ln: ln, uid: os.Getuid(),
		quit: make(chan struct{}), sem: make(chan struct{}, MaxClients)}
	go s.serve()
	return s, nil
}

// FD is the listening socket's descriptor (in Go's poller), for an upgrade
// to keep across its exec; SocketPath the socket file Close removes ("" none).
func (s *Server) FD() int {
	fd := -1
	if rc, err := s.ln.(*net.UnixListener).SyscallConn(); err == nil {
		rc.Control(func(f uintptr) { fd = int(f) })
	}
	return fd
}

func (s *Server) SocketPath() string { return s.sock.Path() }

// Close stops accepting and removes the socket file; clients that stay see
// their connection close. It is idempotent.
func (s *Server) Close() {
	if s == nil {
		return
	}
	s.once.Do(func() {
		s.ln.Close()
		sock.Close(s.sock)
		close(s.quit)
	})
}

func (s *Server) serve() {
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.c.Log.Warn("control socket: accept failed", "err", err) // EMFILE and the like
			select {
			case <-s.quit:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		select {
		case s.sem <- struct{}{}:
			go func() {
				defer func() { <-s.sem }()
				s.client(conn.(*net.UnixConn))
			}()
		default:
			if now := time.Now(); now.Sub(s.lastRefusal) > time.Minute { // once a minute at most
				s.c.Log.Warn("control socket: too many clients at once; refusing them", "max", MaxClients)
				s.lastRefusal = now
			}
			go func() {
				defer conn.Close()
				s.write(conn, s.c.Refuse("too many control clients at once; try again"))
			}()
		}
	}
}

// write writes one answer line, bounded in time.
func (s *Server) write(conn net.Conn, b []byte) error {
	conn.SetWriteDeadline(time.Now().Add(WriteTimeout))
	_, err := conn.Write(append(b, '\n'))
	return err
}

// client serves one connection: check the peer, read one request, answer it.
func (s *Server) client(conn *net.UnixConn) {
	defer conn.Close()
	uid, err := connPeerUID(conn)
	if err != nil {
		s.c.Log.Warn("control socket: cannot read the peer's credentials; closing", "err", err)
		return
	}
	if uid != s.uid && uid != 0 {
		s.c.Log.Warn("control socket: refused a client of another user", "uid", uid)
		s.write(conn, s.c.Refuse(fmt.Sprintf("permission denied: uid %d is neither prefork's (%d) nor root", uid, s.uid)))
		return
	}
	conn.SetReadDeadline(time.Now().Add(RequestTimeout))
	line, err := bufio.NewReader(io.LimitReader(conn, MaxRequest)).ReadBytes('\n')
	// A half-close (EOF: nc -N) ends the request, not the conversation; it is
	// also all that a client which hangs up while it waits (a reload can take
	// minutes) shows until its answer is written, so every answer is written.
	if err != nil && !(errors.Is(err, io.EOF) && len(line) > 0) {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			s.c.Log.Debug("control socket: a client sent no request in time; closing", "timeout", RequestTimeout)
			s.write(conn, s.c.Refuse(fmt.Sprintf("no request within %v", RequestTimeout)))
		}
		return
	}
	conn.SetReadDeadline(time.Time{})
	if len(line) >= MaxRequest && line[len(line)-1] != '\n' {
		s.write(conn, s.c.Refuse(fmt.Sprintf("request too long (more than %d bytes)", MaxRequest)))
		return
	}
	if n := len(line); n > 0 && line[n-1] == '\n' {
		line = line[:n-1]
	}
	answer, stay := s.c.Handle(line, conn, s.quit)
	if answer == nil {
		return // prefork is stopping
	}
	if s.write(conn, answer) == nil && stay {
		<-s.quit
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
