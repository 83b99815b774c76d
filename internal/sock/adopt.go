//go:build linux || darwin

// This file adopts the sockets systemd (or systemd-socket-activate) passed to
// prefork: LISTEN_FDS and LISTEN_PID, with their LISTEN_FDNAMES.
package sock

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Adopt adopts sockets passed by systemd socket activation: when LISTEN_PID
// is this process and LISTEN_FDS=n>0 it returns listeners for fds 3..3+n-1, named
// from LISTEN_FDNAMES (generated where missing or empty), with network and address
// read from the sockets, made close-on-exec and blocking. It always removes
// LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES from the environment, so workers never
// inherit prefork's values. It returns (nil, nil) when the variables are absent or
// meant for another process. Only tcp, udp and unix stream sockets are accepted.
func Adopt() ([]*Listener, error) {
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
	ls := make([]*Listener, 0, n)
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
func adoptFD(fd int, name string) (*Listener, error) {
	typ, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TYPE)
	if errors.Is(err, syscall.ENOTSOCK) || errors.Is(err, syscall.EBADF) {
		return nil, fmt.Errorf("%s, not a listening socket", describeFd(fd))
	}
	if err != nil {
		return nil, os.NewSyscallError("getsockopt SO_TYPE", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		return nil, os.NewSyscallError("getsockname", err)
	}
	if typ == syscall.SOCK_STREAM {
		// Workers would accept on it: a connected socket (or one nobody called
		// listen on) gives them EINVAL at once, and a crash loop.
		if on, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN); err == nil && on == 0 {
			if peer, err := syscall.Getpeername(fd); err == nil {
				return nil, fmt.Errorf("is a connected stream socket (%s to %s), not a listening one", FormatSockaddr(sa), FormatSockaddr(peer))
			}
			return nil, fmt.Errorf("is a stream socket bound to %q that is not listening (listen(2) was not called)", FormatSockaddr(sa))
		}
	}
	var spec Spec
	switch sa.(type) {
	case *syscall.SockaddrInet4, *syscall.SockaddrInet6:
		switch typ {
		case syscall.SOCK_STREAM:
			spec.Network = "tcp"
		case syscall.SOCK_DGRAM:
			spec.Network = "udp"
		}
	case *syscall.SockaddrUnix:
		if typ == syscall.SOCK_STREAM {
			spec.Network = "unix"
		}
	}
	if spec.Network == "" {
		return nil, fmt.Errorf("unsupported socket (type %d, address %T); prefork adopts tcp, udp and unix stream sockets", typ, sa)
	}
	spec.Addr = FormatSockaddr(sa)
	spec.Text = spec.Addr
	if spec.Network == "unix" {
		spec.Text = "unix:" + spec.Addr
	}
	spec.Name = name
	if spec.Name == "" {
		spec.Name = spec.DefaultName()
	}
	syscall.ForkLock.Lock() // no fork may see fd before it is close-on-exec
	syscall.CloseOnExec(fd)
	syscall.ForkLock.Unlock()
	if err := syscall.SetNonblock(fd, false); err != nil {
		return nil, os.NewSyscallError("fcntl", err)
	}
	return &Listener{Spec: spec, FD: fd, bound: spec.Addr}, nil
}

// describeFd says what a descriptor that is not a socket is, for messages.
func describeFd(fd int) string {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return "is not open"
	}
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		return "is a regular file"
	case syscall.S_IFDIR:
		return "is a directory"
	case syscall.S_IFIFO:
		return "is a pipe"
	case syscall.S_IFCHR:
		return "is a character device (a terminal or /dev/null?)"
	}
	return "is not a socket"
}
