//go:build unix

// This file holds prefork's listeners: parsing -p/-l, binding TCP, unix and UDP
// sockets as raw blocking descriptors, SO_REUSEPORT slot sockets, and adopting
// sockets passed by systemd.
//
// Descriptors are made with syscall.Socket, never net.Listen: Go's poller would put
// them in non-blocking mode, and workers must inherit blocking sockets.
package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// listenSpec is one listener as the user asked for it.
type listenSpec struct {
	name    string // for LISTEN_FDNAMES; generated when -l has no NAME=
	network string // "tcp", "unix" or "udp"
	addr    string // "host:port", ":port", or the unix socket path
	text    string // the address as written, for SERVER_STARTER_PORT and logs
}

// listener is one bound socket held by prefork: fd is blocking and close-on-exec.
type listener struct {
	spec listenSpec
	fd   int // -1 once closed

	bound    string      // the address the socket really has (getsockname)
	unixPath string      // socket file prefork created, removed on close; "" if none
	unixFile fs.FileInfo // that file as bound, so close never removes a newer one
}

// addrString returns the address the socket is really bound to, such as
// "[::]:43123", "127.0.0.1:8080" or "/run/app.sock": with port 0 asked for, it
// holds the port the kernel chose.
func (l *listener) addrString() string { return l.bound }

// parsePort parses a -p value: a port number (1..65535, or 0 meaning any free
// port) for a dual-stack TCP listener ":PORT".
func parsePort(s string) (listenSpec, error) {
	port, err := parsePortNumber(s)
	if err != nil {
		return listenSpec{}, fmt.Errorf("invalid port %q: %w", s, err)
	}
	spec := listenSpec{network: "tcp", addr: ":" + strconv.Itoa(port), text: s}
	spec.name = defaultName(spec)
	return spec, nil
}

// parseListen parses a -l value: [NAME=]ADDR where ADDR is HOST:PORT or :PORT
// (tcp), unix:/path/sock (stream unix socket), udp:HOST:PORT or udp::PORT
// (datagram). IPv6 literals go in brackets: [::1]:8080. Host names are kept as
// written and resolved when the socket is opened. The spec's name is always set:
// the given NAME, else defaultName.
func parseListen(s string) (listenSpec, error) {
	name, addr, hasName := "", s, false
	if !strings.HasPrefix(s, "unix:") { // a path may hold '='; a NAME never starts with "unix:"
		name, addr, hasName = strings.Cut(s, "=")
		if !hasName {
			name, addr = "", s
		}
	}
	if hasName {
		if err := checkName(name); err != nil {
			return listenSpec{}, fmt.Errorf("invalid listener %q: %w", s, err)
		}
	}
	spec := listenSpec{name: name, text: addr}
	switch {
	case strings.HasPrefix(addr, "unix:"):
		spec.network, spec.addr = "unix", strings.TrimPrefix(addr, "unix:")
		if spec.addr == "" {
			return listenSpec{}, fmt.Errorf("invalid listener %q: empty unix socket path; want unix:/path/sock", s)
		}
		if strings.IndexByte(spec.addr, 0) >= 0 {
			return listenSpec{}, fmt.Errorf("invalid listener %q: unix socket path holds a NUL byte", s)
		}
	case strings.HasPrefix(addr, "udp:"):
		spec.network = "udp"
		a, err := parseHostPort(strings.TrimPrefix(addr, "udp:"))
		if err != nil {
			return listenSpec{}, fmt.Errorf("invalid listener %q: %w; want udp:HOST:PORT or udp::PORT", s, err)
		}
		spec.addr = a
	default:
		spec.network = "tcp"
		a, err := parseHostPort(addr)
		if err != nil {
			return listenSpec{}, fmt.Errorf("invalid listener %q: %w; want HOST:PORT, :PORT, unix:/path or udp:HOST:PORT", s, err)
		}
		spec.addr = a
	}
	if spec.name == "" {
		spec.name = defaultName(spec)
	}
	return spec, nil
}

// checkName applies systemd's rule for LISTEN_FDNAMES entries (printable ASCII,
// at most 255 bytes, no ':') and forbids '=', which separates NAME from ADDR.
func checkName(name string) error {
	if name == "" {
		return errors.New("empty name before '='")
	}
	if len(name) > 255 {
		return errors.New("name longer than 255 bytes")
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case c == ':':
			return fmt.Errorf("name %q must not contain ':' (it separates names in LISTEN_FDNAMES)", name)
		case c < 0x20 || c > 0x7e:
			return fmt.Errorf("name %q must be printable ASCII", name)
		}
	}
	return nil
}

// parseHostPort checks HOST:PORT or :PORT and returns it with the port in
// canonical form. A host is an IP literal (IPv6 in brackets) or a host name.
func parseHostPort(s string) (string, error) {
	host, portText, err := net.SplitHostPort(s)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return "", errors.New(ae.Err) // "missing port in address" and the like
		}
		return "", err
	}
	port, err := parsePortNumber(portText)
	if err != nil {
		return "", fmt.Errorf("invalid port %q: %w", portText, err)
	}
	if host != "" && !validHost(host) {
		return "", fmt.Errorf("invalid host %q", host)
	}
	return net.JoinHostPort(host, strconv.Itoa(port)), nil
}

// validHost accepts IP literals (with an optional IPv6 zone) and host names made of
// letters, digits, '-', '_' and '.'.
func validHost(h string) bool {
	if ip, zone, ok := strings.Cut(h, "%"); ok {
		return zone != "" && strings.Contains(ip, ":") && net.ParseIP(ip) != nil
	}
	if net.ParseIP(h) != nil {
		return true
	}
	if len(h) > 253 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// parsePortNumber accepts decimal digits only (no service names, no sign), 0..65535.
func parsePortNumber(s string) (int, error) {
	if s == "" {
		return 0, errors.New("empty port")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, errors.New("not a number")
		}
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, errors.New("out of range 0..65535")
	}
	return int(n), nil
}

// defaultName generates a readable LISTEN_FDNAMES name for a spec that has none:
// "tcp-8080", "tcp-127.0.0.1-8080", "tcp-[__1]-8080" (':' becomes '_'),
// "unix-app.sock" (the basename), "udp-5353". Names need not be unique.
func defaultName(s listenSpec) string {
	var name string
	if s.network == "unix" {
		name = "unix-" + filepath.Base(s.addr)
	} else {
		host, port, err := net.SplitHostPort(s.addr)
		switch {
		case err != nil:
			name = s.network + "-" + s.addr
		case host == "" || host == "0.0.0.0" || host == "::":
			name = s.network + "-" + port
		case strings.Contains(host, ":"):
			name = s.network + "-[" + host + "]-" + port
		default:
			name = s.network + "-" + host + "-" + port
		}
	}
	b := []byte(name)
	for i, c := range b {
		if c == ':' || c == '=' || c < 0x20 || c > 0x7e {
			b[i] = '_'
		}
	}
	if len(b) > 255 {
		b = b[:255]
	}
	return string(b)
}

// openListeners binds every spec, in order, all or nothing: on an error it closes
// what it already bound and removes the unix socket files it created. backlog <= 0
// means the system maximum (somaxconn).
//
// TCP ":PORT" is dual-stack (IPv6 socket with IPV6_V6ONLY=0, IPv4 where the machine
// has no IPv6); "0.0.0.0:PORT" is IPv4 only and "[::]:PORT" IPv6 only, as in nginx.
func openListeners(specs []listenSpec, backlog int) ([]*listener, error) {
	return openAll(specs, backlog, false)
}

// openListenersReuseport is openListeners for --mode reuseport: its TCP and UDP
// sockets carry SO_REUSEPORT, so reuseportSocket can open more on the same address;
// the socket it returns can serve as the first slot's. Unix sockets are opened as
// openListeners does (the kernel does not spread unix connections). On macOS it
// fails: the BSD kernel does not balance SO_REUSEPORT sockets.
func openListenersReuseport(specs []listenSpec, backlog int) ([]*listener, error) {
	if err := reuseportAvailable(); err != nil {
		return nil, err
	}
	return openAll(specs, backlog, true)
}

func openAll(specs []listenSpec, backlog int, reuseport bool) ([]*listener, error) {
	if backlog <= 0 {
		backlog = somaxconn()
	}
	ls := make([]*listener, 0, len(specs))
	for _, spec := range specs {
		l, err := openOne(spec, backlog, reuseport)
		if err != nil {
			closeListeners(ls)
			return nil, fmt.Errorf("listen on %s: %w", describe(spec), err)
		}
		ls = append(ls, l)
	}
	return ls, nil
}

// describe names a spec in error messages the way the user wrote it.
func describe(s listenSpec) string {
	if s.text != "" {
		return s.text
	}
	return s.addr
}

func openOne(spec listenSpec, backlog int, reuseport bool) (*listener, error) {
	switch spec.network {
	case "tcp", "udp":
		return openInet(spec, backlog, reuseport)
	case "unix":
		return openUnix(spec, backlog)
	}
	return nil, fmt.Errorf("unknown network %q", spec.network)
}

func openInet(spec listenSpec, backlog int, reuseport bool) (*listener, error) {
	host, portText, err := net.SplitHostPort(spec.addr)
	if err != nil {
		return nil, err
	}
	port, err := parsePortNumber(portText)
	if err != nil {
		return nil, fmt.Errorf("invalid port %q: %w", portText, err)
	}
	var fd int
	if host == "" {
		fd, err = inetSocket(spec.network, &syscall.SockaddrInet6{Port: port}, 0, reuseport, backlog)
		if errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EADDRNOTAVAIL) {
			fd, err = inetSocket(spec.network, &syscall.SockaddrInet4{Port: port}, -1, reuseport, backlog)
		}
	} else {
		var sa syscall.Sockaddr
		sa, err = resolveSockaddr(host, port)
		if err != nil {
			return nil, err
		}
		fd, err = inetSocket(spec.network, sa, 1, reuseport, backlog)
	}
	if err != nil {
		return nil, err
	}
	return newListener(spec, fd)
}

// resolveSockaddr turns an IP literal or a host name into a socket address;
// a name resolving to several addresses gives the first (IPv4 preferred).
func resolveSockaddr(host string, port int) (syscall.Sockaddr, error) {
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
// listening, for TCP). v6only sets IPV6_V6ONLY on IPv6 sockets (0 or 1; -1 leaves it).
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
	if err == nil && typ == syscall.SOCK_STREAM {
		err = os.NewSyscallError("listen", syscall.Listen(fd, backlog))
	}
	if err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

func openUnix(spec listenSpec, backlog int) (*listener, error) {
	path := spec.addr
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
			closeListeners([]*listener{l})
			os.Remove(path)
			return nil, err
		}
	}
	if err := syscall.Listen(fd, backlog); err != nil {
		closeListeners([]*listener{l})
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
func newListener(spec listenSpec, fd int) (*listener, error) {
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		syscall.Close(fd)
		return nil, os.NewSyscallError("getsockname", err)
	}
	return &listener{spec: spec, fd: fd, bound: sockaddrString(sa)}, nil
}

// sockaddrString formats a socket address: "[::]:80", "127.0.0.1:80", "/path".
func sockaddrString(sa syscall.Sockaddr) string {
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

// reuseportSocket opens one more socket on the listener's real address with
// SO_REUSEPORT, for one --mode reuseport worker slot: Linux only, TCP and UDP
// only, and l must come from openListenersReuseport (the kernel refuses to share a
// port with a socket that lacks SO_REUSEPORT).
func (l *listener) reuseportSocket(backlog int) (int, error) {
	if err := reuseportAvailable(); err != nil {
		return -1, err
	}
	if l.spec.network != "tcp" && l.spec.network != "udp" {
		return -1, fmt.Errorf("reuseport on %s: only tcp and udp listeners can have SO_REUSEPORT sockets", l.bound)
	}
	if backlog <= 0 {
		backlog = somaxconn()
	}
	sa, err := syscall.Getsockname(l.fd)
	if err != nil {
		return -1, fmt.Errorf("reuseport on %s: %w", l.bound, os.NewSyscallError("getsockname", err))
	}
	v6only := -1
	if _, ok := sa.(*syscall.SockaddrInet6); ok {
		if v6only, err = syscall.GetsockoptInt(l.fd, syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY); err != nil {
			return -1, fmt.Errorf("reuseport on %s: %w", l.bound, os.NewSyscallError("getsockopt", err))
		}
	}
	fd, err := inetSocket(l.spec.network, sa, v6only, true, backlog)
	if err != nil {
		return -1, fmt.Errorf("reuseport on %s: %w", l.bound, err)
	}
	return fd, nil
}

// closeListeners closes the descriptors and removes the unix socket files prefork
// created (never adopted ones, nor a file someone put in place of ours). Idempotent.
func closeListeners(ls []*listener) {
	for _, l := range ls {
		if l == nil {
			continue
		}
		if l.fd >= 0 {
			syscall.Close(l.fd)
			l.fd = -1
		}
		if l.unixPath != "" {
			if fi, err := os.Lstat(l.unixPath); err == nil && os.SameFile(fi, l.unixFile) {
				os.Remove(l.unixPath)
			}
			l.unixPath = ""
		}
	}
}

// adoptSystemd adopts sockets passed by systemd socket activation: when LISTEN_PID
// is this process and LISTEN_FDS=n>0 it returns listeners for fds 3..3+n-1, named
// from LISTEN_FDNAMES (generated where missing or empty), with network and address
// read from the sockets, made close-on-exec and blocking. It always removes
// LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES from the environment, so workers never
// inherit prefork's values. It returns (nil, nil) when the variables are absent or
// meant for another process. Only tcp, udp and unix stream sockets are accepted.
func adoptSystemd() ([]*listener, error) {
	pidText, hasPID := os.LookupEnv("LISTEN_PID")
	fdsText, hasFDs := os.LookupEnv("LISTEN_FDS")
	namesText, hasNames := os.LookupEnv("LISTEN_FDNAMES")
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	if !hasPID || !hasFDs {
		return nil, nil
	}
	pid, err := strconv.Atoi(pidText)
	if err != nil || pid <= 0 {
		return nil, fmt.Errorf("malformed LISTEN_PID=%q: not a process id", pidText)
	}
	if pid != os.Getpid() {
		return nil, nil
	}
	n, err := strconv.Atoi(fdsText)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("malformed LISTEN_FDS=%q: not a count of descriptors", fdsText)
	}
	if n == 0 {
		return nil, nil
	}
	var names []string
	if hasNames {
		names = strings.Split(namesText, ":")
		if len(names) != n {
			return nil, fmt.Errorf("malformed LISTEN_FDNAMES=%q: %d names for LISTEN_FDS=%d", namesText, len(names), n)
		}
	}
	const first = 3 // SD_LISTEN_FDS_START
	ls := make([]*listener, 0, n)
	for i := 0; i < n; i++ {
		name := ""
		if names != nil {
			name = names[i]
		}
		l, err := adoptFD(first+i, name)
		if err != nil {
			return nil, fmt.Errorf("LISTEN_FDS=%d: fd %d: %w", n, first+i, err)
		}
		ls = append(ls, l)
	}
	return ls, nil
}

// adoptFD makes an inherited socket a listener.
func adoptFD(fd int, name string) (*listener, error) {
	typ, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TYPE)
	if err != nil {
		return nil, os.NewSyscallError("getsockopt SO_TYPE", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		return nil, os.NewSyscallError("getsockname", err)
	}
	var spec listenSpec
	switch sa.(type) {
	case *syscall.SockaddrInet4, *syscall.SockaddrInet6:
		switch typ {
		case syscall.SOCK_STREAM:
			spec.network = "tcp"
		case syscall.SOCK_DGRAM:
			spec.network = "udp"
		}
	case *syscall.SockaddrUnix:
		if typ == syscall.SOCK_STREAM {
			spec.network = "unix"
		}
	}
	if spec.network == "" {
		return nil, fmt.Errorf("unsupported socket (type %d, address %T); prefork adopts tcp, udp and unix stream sockets", typ, sa)
	}
	spec.addr = sockaddrString(sa)
	spec.text = spec.addr
	if spec.network == "unix" {
		spec.text = "unix:" + spec.addr
	}
	spec.name = name
	if spec.name == "" {
		spec.name = defaultName(spec)
	}
	syscall.ForkLock.Lock() // no fork may see fd before it is close-on-exec
	syscall.CloseOnExec(fd)
	syscall.ForkLock.Unlock()
	if err := syscall.SetNonblock(fd, false); err != nil {
		return nil, os.NewSyscallError("fcntl", err)
	}
	return &listener{spec: spec, fd: fd, bound: spec.addr}, nil
}
