//go:build linux || darwin

// This file binds the listeners as raw, blocking, close-on-exec descriptors
// (never through Go's poller): TCP (dual-stack), unix stream and UDP sockets,
// and the SO_REUSEPORT sockets of reuseport mode.
package sock

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strconv"
	"syscall"
)

// Bind binds every spec, in order, all or nothing: on an error it closes what
// it already bound and removes the unix socket files it created. backlog <= 0
// means the system maximum (somaxconn).
//
// TCP ":PORT" is dual-stack (IPv6 socket with IPV6_V6ONLY=0, IPv4 where the machine
// has no IPv6); "0.0.0.0:PORT" is IPv4 only and "[::]:PORT" IPv6 only, as in nginx.
//
// With reuseport (--mode reuseport), TCP and UDP sockets carry SO_REUSEPORT, so
// ReuseportSocket can open more on the same address; the socket returned can
// serve as the first slot's. Unix sockets are bound as without it (the kernel
// does not spread unix connections). On macOS reuseport fails: the BSD kernel
// does not balance SO_REUSEPORT sockets.
func Bind(specs []Spec, backlog int, reuseport bool) ([]*Listener, error) {
	if reuseport {
		if err := reuseportAvailable(); err != nil {
			return nil, err
		}
	}
	if backlog <= 0 {
		backlog = somaxconn()
	}
	ls := make([]*Listener, 0, len(specs))
	for _, spec := range specs {
		l, err := bindOne(spec, backlog, reuseport)
		if err != nil {
			Close(ls...)
			return nil, fmt.Errorf("listen on %s: %w", describe(spec), err)
		}
		ls = append(ls, l)
	}
	return ls, nil
}

// describe names a spec in error messages the way the user wrote it.
func describe(s Spec) string {
	if s.Text != "" {
		return s.Text
	}
	return s.Addr
}

func bindOne(spec Spec, backlog int, reuseport bool) (*Listener, error) {
	switch spec.Network {
	case "tcp", "udp":
		return bindInet(spec, backlog, reuseport)
	case "unix":
		return BindUnix(spec, backlog)
	}
	return nil, fmt.Errorf("unknown network %q", spec.Network)
}

func bindInet(spec Spec, backlog int, reuseport bool) (*Listener, error) {
	host, portText, err := net.SplitHostPort(spec.Addr)
	if err != nil {
		return nil, err
	}
	port, err := parsePortNumber(portText)
	if err != nil {
		return nil, fmt.Errorf("invalid port %q: %w", portText, err)
	}
	var sa syscall.Sockaddr = &syscall.SockaddrInet6{Port: port}
	v6only := 0
	if host != "" {
		if sa, err = Resolve(host, port); err != nil {
			return nil, err
		}
		v6only = 1
	}
	l, err := BindInet(spec, sa, v6only, host == "", reuseport, backlog)
	if reuseport && port != 0 && errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("address already in use: another socket holds it, and --mode reuseport does not join another process's SO_REUSEPORT group (%w)", err)
	}
	return l, err
}

// BindInet binds one TCP or UDP socket for spec at sa (IPv4 or IPv6), with
// IPV6_V6ONLY v6only on an IPv6 socket (0 or 1; -1 leaves the system's
// default), and listens for TCP (backlog <= 0: the system maximum). anyHost
// says sa is the IPv6 wildcard, which becomes IPv4's on a machine without
// IPv6. With reuseport the socket carries SO_REUSEPORT, and a port already
// held by another socket is EADDRINUSE rather than a share of its group.
func BindInet(spec Spec, sa syscall.Sockaddr, v6only int, anyHost, reuseport bool, backlog int) (*Listener, error) {
	if backlog <= 0 {
		backlog = somaxconn()
	}
	open := func(reuseport bool, backlog int) (int, error) {
		fd, err := inetSocket(spec.Network, sa, v6only, reuseport, backlog)
		if anyHost && (errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EADDRNOTAVAIL)) {
			sa, v6only = &syscall.SockaddrInet4{Port: sockaddrPort(sa)}, -1 // no IPv6 on this machine
			fd, err = inetSocket(spec.Network, sa, v6only, reuseport, backlog)
		}
		return fd, err
	}
	if reuseport && sockaddrPort(sa) != 0 {
		// A socket with SO_REUSEPORT joins the group of any socket already bound
		// to the address by the same user: a second prefork would take half of
		// the first one's connections. A bind without SO_REUSEPORT fails on any
		// socket that holds the address, so it finds such a group first.
		probe, err := open(false, bindOnly)
		if err != nil {
			return nil, err
		}
		syscall.Close(probe)
	}
	fd, err := open(reuseport, backlog)
	if err != nil {
		return nil, err
	}
	return newListener(spec, fd)
}

// sockaddrPort is the port of an IPv4 or IPv6 socket address.
func sockaddrPort(sa syscall.Sockaddr) int {
	if sa4, ok := sa.(*syscall.SockaddrInet4); ok {
		return sa4.Port
	}
	return sa.(*syscall.SockaddrInet6).Port
}

// bindOnly as inetSocket's backlog binds a stream socket without listening.
const bindOnly = -1

// Resolve turns an IP literal or a host name into a socket address;
// a name resolving to several addresses gives the first (IPv4 preferred).
func Resolve(host string, port int) (syscall.Sockaddr, error) {
	a, err := net.ResolveIPAddr("ip", host)
	if err != nil {
		return nil, err
	}
	if ip4 := a.IP.To4(); ip4 != nil {
		sa := &syscall.SockaddrInet4{Port: port}
		copy(sa.Addr[:], ip4)
		return sa, nil
	}
	sa := &syscall.SockaddrInet6{Port: port}
	copy(sa.Addr[:], a.IP.To16())
	if a.Zone != "" {
		if ifi, err := net.InterfaceByName(a.Zone); err == nil {
			sa.ZoneId = uint32(ifi.Index)
		} else if n, err := strconv.ParseUint(a.Zone, 10, 32); err == nil {
			sa.ZoneId = uint32(n)
		} else {
			return nil, fmt.Errorf("unknown IPv6 zone %q", a.Zone)
		}
	}
	return sa, nil
}

// inetSocket makes a blocking, close-on-exec TCP or UDP socket bound to sa (and
// listening, for TCP, unless backlog is bindOnly). v6only sets IPV6_V6ONLY on IPv6 sockets (0 or 1; -1 leaves it).
func inetSocket(network string, sa syscall.Sockaddr, v6only int, reuseport bool, backlog int) (int, error) {
	family, typ := syscall.AF_INET, syscall.SOCK_STREAM
	if _, ok := sa.(*syscall.SockaddrInet6); ok {
		family = syscall.AF_INET6
	}
	if network == "udp" {
		typ = syscall.SOCK_DGRAM
	}
	fd, err := sysSocket(family, typ)
	if err != nil {
		return -1, err
	}
	setopt := func(level, opt, v int) {
		if err == nil {
			err = os.NewSyscallError("setsockopt", syscall.SetsockoptInt(fd, level, opt, v))
		}
	}
	if typ == syscall.SOCK_STREAM {
		setopt(syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	}
	if reuseport {
		setopt(syscall.SOL_SOCKET, soReusePort, 1)
	}
	if family == syscall.AF_INET6 && v6only >= 0 {
		setopt(syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY, v6only)
	}
	if err == nil {
		err = os.NewSyscallError("bind", syscall.Bind(fd, sa))
	}
	if err == nil && typ == syscall.SOCK_STREAM && backlog != bindOnly {
		err = os.NewSyscallError("listen", syscall.Listen(fd, backlog))
	}
	if err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

func BindUnix(spec Spec, backlog int) (*Listener, error) {
	path := spec.Addr
	if len(path) >= maxUnixPath {
		return nil, fmt.Errorf("unix socket path is %d bytes long; this system allows %d", len(path), maxUnixPath-1)
	}
	abstract := isAbstract(path)
	if !abstract {
		if err := clearStaleSocket(path); err != nil {
			return nil, err
		}
	}
	fd, err := sysSocket(syscall.AF_UNIX, syscall.SOCK_STREAM)
	if err != nil {
		return nil, err
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		syscall.Close(fd)
		return nil, os.NewSyscallError("bind", err)
	}
	l, err := newListener(spec, fd)
	if err != nil { // fd is closed; the file is ours
		if !abstract {
			os.Remove(path)
		}
		return nil, err
	}
	if !abstract {
		l.unixPath = path
		if l.unixFile, err = os.Lstat(path); err != nil {
			Close(l)
			os.Remove(path)
			return nil, err
		}
	}
	if err := syscall.Listen(fd, backlog); err != nil {
		Close(l)
		return nil, os.NewSyscallError("listen", err)
	}
	return l, nil
}

// isAbstract reports a Linux abstract socket name ("@name"): no file to manage.
func isAbstract(path string) bool { return path[0] == '@' && abstractUnixSockets }

// clearStaleSocket makes way for a unix socket at path: nothing there is fine; a
// socket nobody accepts on (connect is refused) is removed; a live socket or
// anything that is not a socket is an error and is left alone.
func clearStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; not removing it", path)
	}
	// A non-blocking probe: a live server with a full queue must not hang us.
	fd, err := sysSocket(syscall.AF_UNIX, syscall.SOCK_STREAM)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	if err := syscall.SetNonblock(fd, true); err != nil {
		return os.NewSyscallError("setnonblock", err)
	}
	err = syscall.Connect(fd, &syscall.SockaddrUnix{Name: path})
	switch {
	case err == nil:
		return fmt.Errorf("address already in use: a process accepts on %s", path)
	case errors.Is(err, syscall.ECONNREFUSED):
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	default:
		return fmt.Errorf("address already in use: %s exists and is not stale (connect: %w)", path, err)
	}
}

// newListener wraps a bound socket, reading its real address; it closes fd on error.
func newListener(spec Spec, fd int) (*Listener, error) {
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		syscall.Close(fd)
		return nil, os.NewSyscallError("getsockname", err)
	}
	return &Listener{Spec: spec, FD: fd, bound: FormatSockaddr(sa)}, nil
}

// FormatSockaddr formats a socket address: "[::]:80", "127.0.0.1:80", "/path".
func FormatSockaddr(sa syscall.Sockaddr) string {
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		return net.JoinHostPort(net.IP(sa.Addr[:]).String(), strconv.Itoa(sa.Port))
	case *syscall.SockaddrInet6:
		host := net.IP(sa.Addr[:]).String()
		if sa.ZoneId != 0 {
			host += "%" + strconv.Itoa(int(sa.ZoneId))
		}
		return net.JoinHostPort(host, strconv.Itoa(sa.Port))
	case *syscall.SockaddrUnix:
		return sa.Name
	}
	return ""
}

// ReuseportSocket opens one more socket on the listener's real address with
// SO_REUSEPORT, for one --mode reuseport worker slot: Linux only, TCP and UDP
// only, and l must come from Bind with reuseport (the kernel refuses to share a
// port with a socket that lacks SO_REUSEPORT).
func (l *Listener) ReuseportSocket(backlog int) (int, error) {
	if err := reuseportAvailable(); err != nil {
		return -1, err
	}
	if l.Spec.Network != "tcp" && l.Spec.Network != "udp" {
		return -1, fmt.Errorf("reuseport on %s: only tcp and udp listeners can have SO_REUSEPORT sockets", l.bound)
	}
	if backlog <= 0 {
		backlog = somaxconn()
	}
	sa, err := syscall.Getsockname(l.FD)
	if err != nil {
		return -1, fmt.Errorf("reuseport on %s: %w", l.bound, os.NewSyscallError("getsockname", err))
	}
	v6only := -1
	if _, ok := sa.(*syscall.SockaddrInet6); ok {
		if v6only, err = syscall.GetsockoptInt(l.FD, syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY); err != nil {
			return -1, fmt.Errorf("reuseport on %s: %w", l.bound, os.NewSyscallError("getsockopt", err))
		}
	}
	fd, err := inetSocket(l.Spec.Network, sa, v6only, true, backlog)
	if err != nil {
		return -1, fmt.Errorf("reuseport on %s: %w", l.bound, err)
	}
	return fd, nil
}

// Close closes the descriptors and removes the unix socket files prefork
// created (never adopted ones, nor a file someone put in place of ours). Idempotent.
func Close(ls ...*Listener) {
	for _, l := range ls {
		if l == nil {
			continue
		}
		if l.FD >= 0 {
			syscall.Close(l.FD)
			l.FD = -1
		}
		if l.unixPath != "" {
			if fi, err := os.Lstat(l.unixPath); err == nil && os.SameFile(fi, l.unixFile) {
				os.Remove(l.unixPath)
			}
			l.unixPath = ""
		}
	}
}

// Restore is a listener handed over by an earlier image of prefork (an
// in-place upgrade): fd is the socket as it was, bound is its address, and
// unixPath the socket file that image created ("" none), which Close removes
// as long as it is still the file found here now.
func Restore(spec Spec, fd int, bound, unixPath string) *Listener {
	l := &Listener{Spec: spec, FD: fd, bound: bound}
	if unixPath != "" {
		if fi, err := os.Lstat(unixPath); err == nil {
			l.unixPath, l.unixFile = unixPath, fi
		}
	}
	return l
}
