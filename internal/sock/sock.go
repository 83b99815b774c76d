//go:build linux || darwin

// Package sock holds prefork's listening sockets: it parses -p and -l into
// specs, binds them as raw, blocking, close-on-exec descriptors (bind.go),
// adopts the ones systemd passes (adopt.go), opens the SO_REUSEPORT sockets of
// reuseport mode and, in Watch's goroutine, puts back a listener a worker shut
// down. This file holds the specs and their LISTEN_FDNAMES names, Listener, Watch.
package sock

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Spec is one listener as the user asked for it.
type Spec struct {
	Name    string // for LISTEN_FDNAMES; generated when -l has no NAME=
	Network string // "tcp", "unix" or "udp"
	Addr    string // "host:port", ":port", or the unix socket path
	Text    string // the address as written, for SERVER_STARTER_PORT and logs
}

// Listener is one bound socket held by prefork: FD is blocking and close-on-exec.
type Listener struct {
	Spec Spec
	FD   int // -1 once closed

	bound    string      // the address the socket really has (getsockname)
	unixPath string      // socket file prefork created, removed on close; "" if none
	unixFile fs.FileInfo // that file as bound, so close never removes a newer one
}

// Bound returns the address the socket is really bound to, such as
// "[::]:43123", "127.0.0.1:8080" or "/run/app.sock": with port 0 asked for, it
// holds the port the kernel chose.
func (l *Listener) Bound() string { return l.bound }

// Path is the unix socket file prefork created for l, which Close removes; ""
// for other sockets, abstract and adopted ones.
func (l *Listener) Path() string { return l.unixPath }

// ParsePort parses a -p value: a port number (1..65535, or 0 meaning any free
// port) for a dual-stack TCP listener ":PORT".
func ParsePort(s string) (Spec, error) {
	port, err := parsePortNumber(s)
	if err != nil {
		return Spec{}, fmt.Errorf("invalid port %q: %w", s, err)
	}
	spec := Spec{Network: "tcp", Addr: ":" + strconv.Itoa(port), Text: s}
	spec.Name = spec.DefaultName()
	return spec, nil
}

// ParseSpec parses a -l value: [NAME=]ADDR where ADDR is HOST:PORT or :PORT
// (tcp), unix:/path/sock (stream unix socket), udp:HOST:PORT or udp::PORT
// (datagram). IPv6 literals go in brackets: [::1]:8080. Host names are kept as
// written and resolved when the socket is opened. The spec's name is always set:
// the given NAME, else DefaultName.
func ParseSpec(s string) (Spec, error) {
	name, addr, hasName := "", s, false
	if !strings.HasPrefix(s, "unix:") { // a path may hold '='; a NAME never starts with "unix:"
		name, addr, hasName = strings.Cut(s, "=")
		if !hasName {
			name, addr = "", s
		}
	}
	if hasName {
		if err := checkName(name); err != nil {
			return Spec{}, fmt.Errorf("invalid listener %q: %w", s, err)
		}
	}
	spec := Spec{Name: name, Text: addr}
	switch {
	case strings.HasPrefix(addr, "unix:"):
		spec.Network, spec.Addr = "unix", strings.TrimPrefix(addr, "unix:")
		if spec.Addr == "" {
			return Spec{}, fmt.Errorf("invalid listener %q: empty unix socket path; want unix:/path/sock", s)
		}
		if strings.IndexByte(spec.Addr, 0) >= 0 {
			return Spec{}, fmt.Errorf("invalid listener %q: unix socket path holds a NUL byte", s)
		}
	case strings.HasPrefix(addr, "udp:"):
		spec.Network = "udp"
		a, err := parseHostPort(strings.TrimPrefix(addr, "udp:"))
		if err != nil {
			return Spec{}, fmt.Errorf("invalid listener %q: %w; want udp:HOST:PORT or udp::PORT", s, err)
		}
		spec.Addr = a
	default:
		spec.Network = "tcp"
		a, err := parseHostPort(addr)
		if err != nil {
			return Spec{}, fmt.Errorf("invalid listener %q: %w; want HOST:PORT, :PORT, unix:/path or udp:HOST:PORT", s, err)
		}
		spec.Addr = a
	}
	if spec.Name == "" {
		spec.Name = spec.DefaultName()
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

// DefaultName generates a readable LISTEN_FDNAMES name for a spec that has none:
// "tcp-8080", "tcp-127.0.0.1-8080", "tcp-[__1]-8080" (':' becomes '_'),
// "unix-app.sock" (the basename), "udp-5353". Names need not be unique.
func (s Spec) DefaultName() string {
	var name string
	if s.Network == "unix" {
		name = "unix-" + filepath.Base(s.Addr)
	} else {
		host, port, err := net.SplitHostPort(s.Addr)
		switch {
		case err != nil:
			name = s.Network + "-" + s.Addr
		case host == "" || host == "0.0.0.0" || host == "::":
			name = s.Network + "-" + port
		case strings.Contains(host, ":"):
			name = s.Network + "-[" + host + "]-" + port
		default:
			name = s.Network + "-" + host + "-" + port
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

// Watch puts back in the listening state, once a second, a stream
// listener that stopped listening: shutdown(2) by any one worker on the socket
// they all share stops it for every process, and nothing else would notice
// (the others' accept fails with EINVAL; clients are refused). The socket
// stays bound, so listen(2) again is all it takes. It returns the function
// that stops the watch and waits for it.
func Watch(ls []*Listener, backlog int, log *slog.Logger) (stop func()) {
	if backlog <= 0 {
		backlog = somaxconn()
	}
	// A socket bound to port 0 loses its port when it stops listening (the
	// kernel frees a port it chose itself): it is bound to the same again.
	addrs := make([]syscall.Sockaddr, len(ls))
	for i, l := range ls {
		addrs[i], _ = syscall.Getsockname(l.FD)
	}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
			}
			for i, l := range ls {
				if l.Spec.Network == "udp" {
					continue
				}
				if v, err := syscall.GetsockoptInt(l.FD, syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN); err == nil && v == 0 {
					if addrs[i] != nil && l.Spec.Network == "tcp" {
						syscall.Bind(l.FD, addrs[i]) // EINVAL when it kept its port
					}
					err := syscall.Listen(l.FD, backlog)
					log.Error("a listener stopped listening (did a worker shut it down?); listening again",
						"addr", l.Bound(), "err", err)
				}
			}
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}
