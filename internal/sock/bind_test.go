//go:build linux || darwin

// This file tests binding: real sockets, their flags, unix socket files, the
// all-or-nothing rule and SO_REUSEPORT.
package sock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestBindTCPLoopback(t *testing.T) {
	ls := lstOpen(t, "127.0.0.1:0")
	l := ls[0]
	if l.Spec.Addr != "127.0.0.1:0" || l.Spec.Text != "127.0.0.1:0" {
		t.Errorf("spec changed: %+v", l.Spec)
	}
	if !strings.HasPrefix(l.Bound(), "127.0.0.1:") {
		t.Errorf("Bound() = %q", l.Bound())
	}
	lstPort(t, l.Bound())
	lstCheckFlags(t, l.FD)
	if v, err := syscall.GetsockoptInt(l.FD, syscall.SOL_SOCKET, syscall.SO_REUSEADDR); err != nil || v == 0 {
		t.Errorf("SO_REUSEADDR = %d, %v", v, err)
	}
	lstAccept(t, l.FD, "tcp", l.Bound())
}

func TestBindDualStack(t *testing.T) {
	l := lstOpen(t, ":0")[0]
	lstCheckFlags(t, l.FD)
	port := lstPort(t, l.Bound())
	lstAccept(t, l.FD, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if !lstHaveIPv6() {
		t.Log("no IPv6 on this machine: checked the IPv4 fallback only")
		return
	}
	if want := fmt.Sprintf("[::]:%d", port); l.Bound() != want {
		t.Errorf("Bound() = %q, want %q", l.Bound(), want)
	}
	lstAccept(t, l.FD, "tcp", fmt.Sprintf("[::1]:%d", port))
}

func TestBindIPv6Only(t *testing.T) {
	if !lstHaveIPv6() {
		t.Skip("no IPv6 on this machine")
	}
	l := lstOpen(t, "[::]:0")[0]
	if v, err := syscall.GetsockoptInt(l.FD, syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY); err != nil || v != 1 {
		t.Errorf("IPV6_V6ONLY = %d, %v; want 1 for an explicit [::]", v, err)
	}
	lstAccept(t, l.FD, "tcp", fmt.Sprintf("[::1]:%d", lstPort(t, l.Bound())))
}

func TestBindUDP(t *testing.T) {
	l := lstOpen(t, "udp:127.0.0.1:0")[0]
	lstCheckFlags(t, l.FD)
	if typ, err := syscall.GetsockoptInt(l.FD, syscall.SOL_SOCKET, syscall.SO_TYPE); err != nil || typ != syscall.SOCK_DGRAM {
		t.Fatalf("SO_TYPE = %d, %v", typ, err)
	}
	c, err := net.Dial("udp", l.Bound())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	tv := syscall.NsecToTimeval(int64(5 * time.Second))
	if err := syscall.SetsockoptTimeval(l.FD, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, _, err := syscall.Recvfrom(l.FD, buf, 0)
	for err == syscall.EINTR { // not restarted under SO_RCVTIMEO
		n, _, err = syscall.Recvfrom(l.FD, buf, 0)
	}
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("recvfrom: %q, %v", buf[:n], err)
	}
}

func TestBindUnix(t *testing.T) {
	dir := lstTempDir(t)

	t.Run("fresh", func(t *testing.T) {
		path := filepath.Join(dir, "fresh.sock")
		old := syscall.Umask(0o027)
		ls, err := Bind(lstSpecs(t, "unix:"+path), 16, false)
		syscall.Umask(old)
		if err != nil {
			t.Fatal(err)
		}
		l := ls[0]
		lstCheckFlags(t, l.FD)
		if l.Bound() != path {
			t.Errorf("Bound() = %q, want %q", l.Bound(), path)
		}
		fi, err := os.Lstat(path)
		if err != nil || fi.Mode().Type() != os.ModeSocket {
			t.Fatalf("socket file: %v, %v", fi, err)
		}
		if perm := fi.Mode().Perm() & 0o666; perm != 0o640 {
			t.Errorf("socket file mode %v with umask 027, want rw-r----- bits", fi.Mode().Perm())
		}
		lstAccept(t, l.FD, "unix", path)
		Close(ls...)
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket file left after Close: %v", err)
		}
		if l.FD != -1 {
			t.Errorf("fd = %d after close", l.FD)
		}
		Close(ls...) // idempotent
	})

	t.Run("stale", func(t *testing.T) {
		path := filepath.Join(dir, "stale.sock")
		// A socket file nobody listens on, as a crashed server leaves it.
		fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
			t.Fatal(err)
		}
		syscall.Close(fd)
		// Binding fails unless the stale file is removed; accepting proves the new
		// socket is the one at path.
		l := lstOpen(t, "unix:"+path)[0]
		lstAccept(t, l.FD, "unix", path)
	})

	t.Run("live", func(t *testing.T) {
		path := filepath.Join(dir, "live.sock")
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		_, err = Bind(lstSpecs(t, "unix:"+path), 0, false)
		if err == nil || !strings.Contains(err.Error(), "address already in use") || !strings.Contains(err.Error(), path) {
			t.Fatalf("open over a live socket: %v, want address already in use naming %s", err, path)
		}
		// The live server still owns its socket.
		go func() {
			if c, err := ln.Accept(); err == nil {
				c.Close()
			}
		}()
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("live socket broken: %v", err)
		}
		c.Close()
	})

	t.Run("regular file", func(t *testing.T) {
		path := filepath.Join(dir, "data.txt")
		if err := os.WriteFile(path, []byte("keep me"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Bind(lstSpecs(t, "unix:"+path), 0, false)
		if err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Fatalf("open over a regular file: %v, want not a socket", err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != "keep me" {
			t.Errorf("regular file changed: %q, %v", b, err)
		}
	})

	t.Run("replaced file kept", func(t *testing.T) {
		path := filepath.Join(dir, "replaced.sock")
		ls, err := Bind(lstSpecs(t, "unix:"+path), 0, false)
		if err != nil {
			t.Fatal(err)
		}
		// Someone else puts a file in place of ours: closing must not remove it.
		os.Remove(path)
		if err := os.WriteFile(path, []byte("theirs"), 0o644); err != nil {
			t.Fatal(err)
		}
		Close(ls...)
		if b, err := os.ReadFile(path); err != nil || string(b) != "theirs" {
			t.Errorf("Close removed a file it did not create: %q, %v", b, err)
		}
	})

	t.Run("path too long", func(t *testing.T) {
		path := "/tmp/" + strings.Repeat("x", 120)
		_, err := Bind(lstSpecs(t, "unix:"+path), 0, false)
		if err == nil || !strings.Contains(err.Error(), "bytes long") {
			t.Fatalf("open with a long path: %v", err)
		}
	})
}

func TestBindAllOrNothing(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	sock := filepath.Join(lstTempDir(t), "first.sock")
	specs := lstSpecs(t, "unix:"+sock, "udp:127.0.0.1:0", taken.Addr().String())

	before := lstOpenFDs(t)
	ls, err := Bind(specs, 0, false)
	if err == nil {
		Close(ls...)
		t.Fatal("binding a taken port succeeded")
	}
	if !strings.Contains(err.Error(), "listen on "+taken.Addr().String()) || !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("error %q does not name %s with EADDRINUSE", err, taken.Addr())
	}
	if ls != nil {
		t.Errorf("got listeners with an error: %v", ls)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("unix socket file of the first spec left behind: %v", err)
	}
	if after := lstOpenFDs(t); !slices.Equal(before, after) {
		t.Errorf("descriptors leaked: before %v, after %v", before, after)
	}
}

func TestSomaxconn(t *testing.T) {
	n := somaxconn()
	if n <= 0 {
		t.Fatalf("somaxconn() = %d", n)
	}
	if b, err := os.ReadFile("/proc/sys/net/core/somaxconn"); err == nil {
		if want, _ := strconv.Atoi(strings.TrimSpace(string(b))); n != want {
			t.Errorf("somaxconn() = %d, /proc says %d", n, want)
		}
	}
}

func TestReuseport(t *testing.T) {
	if runtime.GOOS != "linux" {
		l := lstOpen(t, "127.0.0.1:0")[0]
		if _, err := l.ReuseportSocket(0); err == nil || !strings.Contains(err.Error(), "--mode shared") {
			t.Errorf("ReuseportSocket on %s: %v, want an error pointing to --mode shared", runtime.GOOS, err)
		}
		if _, err := Bind(lstSpecs(t, ":0"), 0, true); err == nil || !strings.Contains(err.Error(), "--mode shared") {
			t.Errorf("Bind with reuseport on %s: %v", runtime.GOOS, err)
		}
		return
	}
	ls, err := Bind(lstSpecs(t, ":0", "udp:127.0.0.1:0", "unix:"+filepath.Join(lstTempDir(t), "rp.sock")), 0, true)
	if err != nil {
		t.Fatal(err)
	}
	defer Close(ls...)
	tcp, udp, unix := ls[0], ls[1], ls[2]

	fd, err := tcp.ReuseportSocket(0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	lstCheckFlags(t, fd)
	sa, err := syscall.Getsockname(fd)
	if err != nil || FormatSockaddr(sa) != tcp.Bound() {
		t.Fatalf("second socket bound to %v (%v), want %s", FormatSockaddr(sa), err, tcp.Bound())
	}
	// With the first socket gone, the kernel sends every connection to the
	// second, over IPv4 too: it is dual-stack like the first.
	syscall.Close(tcp.FD)
	tcp.FD = -1
	lstAccept(t, fd, "tcp", fmt.Sprintf("127.0.0.1:%d", lstPort(t, tcp.Bound())))

	ufd, err := udp.ReuseportSocket(0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(ufd)
	if sa, err := syscall.Getsockname(ufd); err != nil || FormatSockaddr(sa) != udp.Bound() {
		t.Errorf("second udp socket bound to %v (%v), want %s", FormatSockaddr(sa), err, udp.Bound())
	}

	if _, err := unix.ReuseportSocket(0); err == nil || !strings.Contains(err.Error(), "only tcp and udp") {
		t.Errorf("ReuseportSocket on unix: %v", err)
	}
	plain := lstOpen(t, "127.0.0.1:0")[0]
	if _, err := plain.ReuseportSocket(0); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("ReuseportSocket on a listener without SO_REUSEPORT: %v, want EADDRINUSE", err)
	}
}
