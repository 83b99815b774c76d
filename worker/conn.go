//go:build unix

// This file holds the net.Conn that Accept returns in rr mode.
package worker

import (
	"io"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"
)

// Conn is a connection prefork handed over in rr mode, as Accept returns it:
// a net.Conn on the received descriptor, read and written through Go's poller
// like a *net.TCPConn or *net.UnixConn, with CloseRead, CloseWrite,
// SetNoDelay, SetKeepAlive and SyscallConn for what those add.
//
// It is not made with net.FileConn, which duplicates the descriptor, closes
// the original, and asks the kernel again for its type and flags: five system
// calls per connection that a worker's accept does not pay, and on a virtual
// machine each costs microseconds. A TCP connection gets what net's Accept
// gives one: TCP_NODELAY, and keep-alive probes after 15 s idle.
type Conn struct {
	f            *os.File
	network      string // "tcp" or "unix"
	laddr, raddr net.Addr
}

// newConn makes a Conn of a connection received in blocking mode (README: The rr handoff protocol).
// The descriptor is closed if it cannot be used.
func newConn(fd int) (*Conn, error) {
	if err := setNonblock(fd); err != nil {
		syscall.Close(fd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	lsa, err := syscall.Getsockname(fd)
	if err != nil {
		syscall.Close(fd)
		return nil, os.NewSyscallError("getsockname", err)
	}
	c := &Conn{network: "unix"}
	switch lsa.(type) {
	case *syscall.SockaddrInet4, *syscall.SockaddrInet6:
		c.network = "tcp"
		setTCPDefaults(fd)
	}
	c.laddr = sockaddrAddr(lsa)
	if rsa, err := syscall.Getpeername(fd); err == nil { // a peer already gone has none, as with net
		c.raddr = sockaddrAddr(rsa)
	}
	c.f = os.NewFile(uintptr(fd), "prefork-conn") // non-blocking: in Go's poller
	return c, nil
}

// sockaddrAddr is the net.Addr of a socket address, nil for none.
func sockaddrAddr(sa syscall.Sockaddr) net.Addr {
	switch a := sa.(type) {
	case *syscall.SockaddrInet4:
		return &net.TCPAddr{IP: a.Addr[:], Port: a.Port}
	case *syscall.SockaddrInet6:
		zone := ""
		if a.ZoneId != 0 {
			zone = strconv.Itoa(int(a.ZoneId))
			if ifi, err := net.InterfaceByIndex(int(a.ZoneId)); err == nil {
				zone = ifi.Name
			}
		}
		return &net.TCPAddr{IP: a.Addr[:], Port: a.Port, Zone: zone}
	case *syscall.SockaddrUnix:
		return &net.UnixAddr{Name: a.Name, Net: "unix"}
	}
	return nil
}

// opError wraps what os.File returns the way net does: a *net.OpError around
// the system call's error, net.ErrClosed for a closed connection. io.EOF and
// nil pass through.
func (c *Conn) opError(op string, err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	if pe, ok := err.(*os.PathError); ok {
		err = pe.Err
	}
	switch e := err.(type) {
	case syscall.Errno:
		err = os.NewSyscallError(op, e)
	default:
		if err == os.ErrClosed {
			err = net.ErrClosed
		}
	}
	return &net.OpError{Op: op, Net: c.network, Source: c.laddr, Addr: c.raddr, Err: err}
}

func (c *Conn) Read(b []byte) (int, error) {
	n, err := c.f.Read(b)
	return n, c.opError("read", err)
}

func (c *Conn) Write(b []byte) (int, error) {
	n, err := c.f.Write(b)
	return n, c.opError("write", err)
}

func (c *Conn) Close() error                       { return c.opError("close", c.f.Close()) }
func (c *Conn) LocalAddr() net.Addr                { return c.laddr }
func (c *Conn) RemoteAddr() net.Addr               { return c.raddr }
func (c *Conn) SetDeadline(t time.Time) error      { return c.opError("set", c.f.SetDeadline(t)) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.opError("set", c.f.SetReadDeadline(t)) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.opError("set", c.f.SetWriteDeadline(t)) }

// ReadFrom copies r to the connection until EOF. From a regular file (or an
// io.LimitedReader of one) it uses sendfile(2) on Linux, as net.TCPConn does,
// so that http.ServeFile through an rr worker copies nothing through Go.
func (c *Conn) ReadFrom(r io.Reader) (int64, error) {
	n, handled, err := c.sendFile(r)
	if handled {
		return n, c.opError("sendfile", err)
	}
	m, err := io.Copy(writerOnly{c}, r)
	return n + m, err
}

// writerOnly hides Conn's ReadFrom from io.Copy, which would call it again.
type writerOnly struct{ io.Writer }

// SyscallConn gives the descriptor, as net.TCPConn's does.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.f.SyscallConn() }

// CloseRead shuts down the reading side of the connection.
func (c *Conn) CloseRead() error { return c.shutdown(syscall.SHUT_RD) }

// CloseWrite shuts down the writing side: the peer reads end of file.
func (c *Conn) CloseWrite() error { return c.shutdown(syscall.SHUT_WR) }

func (c *Conn) shutdown(how int) error {
	return c.control("shutdown", func(fd int) error { return syscall.Shutdown(fd, how) })
}

// SetNoDelay turns Nagle's algorithm off (true, the default) or on.
func (c *Conn) SetNoDelay(noDelay bool) error {
	return c.control("setsockopt", func(fd int) error {
		return syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, boolInt(noDelay))
	})
}

// SetKeepAlive turns TCP keep-alive probes on (the default) or off.
func (c *Conn) SetKeepAlive(keepAlive bool) error {
	return c.control("setsockopt", func(fd int) error {
		return syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, boolInt(keepAlive))
	})
}

// control runs a system call on the descriptor and wraps its error.
func (c *Conn) control(call string, f func(fd int) error) error {
	rc, err := c.f.SyscallConn()
	if err != nil {
		return c.opError(call, err)
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return c.opError(call, err)
	}
	return c.opError(call, ferr)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
