//go:build unix

// This file tests listeners.go on real sockets: parsing, binding, flags of the
// descriptors, unix socket files, SO_REUSEPORT, and systemd adoption in a child.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseListen(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want listenSpec
	}{
		{":8080", listenSpec{"tcp-8080", "tcp", ":8080", ":8080"}},
		{":0", listenSpec{"tcp-0", "tcp", ":0", ":0"}},
		{"127.0.0.1:80", listenSpec{"tcp-127.0.0.1-80", "tcp", "127.0.0.1:80", "127.0.0.1:80"}},
		{"0.0.0.0:080", listenSpec{"tcp-80", "tcp", "0.0.0.0:80", "0.0.0.0:080"}},
		{"[::1]:8080", listenSpec{"tcp-[__1]-8080", "tcp", "[::1]:8080", "[::1]:8080"}},
		{"[fe80::1%eth0]:80", listenSpec{"tcp-[fe80__1%eth0]-80", "tcp", "[fe80::1%eth0]:80", "[fe80::1%eth0]:80"}},
		{"localhost:65535", listenSpec{"tcp-localhost-65535", "tcp", "localhost:65535", "localhost:65535"}},
		{"web=:8080", listenSpec{"web", "tcp", ":8080", ":8080"}},
		{"my web=[::]:443", listenSpec{"my web", "tcp", "[::]:443", "[::]:443"}},
		{"unix:/run/app.sock", listenSpec{"unix-app.sock", "unix", "/run/app.sock", "unix:/run/app.sock"}},
		{"unix:rel/a=b.sock", listenSpec{"unix-a_b.sock", "unix", "rel/a=b.sock", "unix:rel/a=b.sock"}},
		{"admin=unix:/run/admin.sock", listenSpec{"admin", "unix", "/run/admin.sock", "unix:/run/admin.sock"}},
		{"udp::5353", listenSpec{"udp-5353", "udp", ":5353", "udp::5353"}},
		{"dns=udp:127.0.0.1:53", listenSpec{"dns", "udp", "127.0.0.1:53", "udp:127.0.0.1:53"}},
		{"udp:[::1]:53", listenSpec{"udp-[__1]-53", "udp", "[::1]:53", "udp:[::1]:53"}},
	} {
		got, err := parseListen(tc.in)
		if err != nil {
			t.Errorf("parseListen(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("parseListen(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct{ in, errText string }{
		{"", "missing port"},
		{"8080", "missing port"},
		{":", "empty port"},
		{":http", `invalid port "http"`},
		{":-1", `invalid port "-1"`},
		{":+80", `invalid port "+80"`},
		{":65536", "out of range"},
		{"::1:80", "too many colons"},
		{"[::1]", "missing port"},
		{"bad host!:80", `invalid host "bad host!"`},
		{"127.0.0.1%eth0:80", "invalid host"},
		{"web:1=:80", "must not contain ':'"},
		{"=:80", "empty name"},
		{"a\tb=:80", "printable ASCII"},
		{strings.Repeat("n", 256) + "=:80", "longer than 255"},
		{"unix:", "empty unix socket path"},
		{"web=unix:", "empty unix socket path"},
		{"unix:/a\x00b", "NUL"},
		{"udp:53", "want udp:HOST:PORT"},
		{"udp:", "missing port"},
		{"udp::99999", "out of range"},
		{"tcp::80", "want HOST:PORT"},
	} {
		_, err := parseListen(tc.in)
		if err == nil {
			t.Errorf("parseListen(%q) succeeded, want error with %q", tc.in, tc.errText)
			continue
		}
		if !strings.Contains(err.Error(), tc.errText) {
			t.Errorf("parseListen(%q) error %q, want it to contain %q", tc.in, err, tc.errText)
		}
		if !strings.HasPrefix(err.Error(), "invalid listener ") {
			t.Errorf("parseListen(%q) error %q does not name the listener", tc.in, err)
		}
	}
}

func TestParsePort(t *testing.T) {
	for in, want := range map[string]listenSpec{
		"8080":  {"tcp-8080", "tcp", ":8080", "8080"},
		"0":     {"tcp-0", "tcp", ":0", "0"},
		"65535": {"tcp-65535", "tcp", ":65535", "65535"},
		"01":    {"tcp-1", "tcp", ":1", "01"},
	} {
		got, err := parsePort(in)
		if err != nil || got != want {
			t.Errorf("parsePort(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "http", "-1", "65536", ":80", "80 ", "1e3"} {
		if _, err := parsePort(in); err == nil || !strings.Contains(err.Error(), "invalid port") {
			t.Errorf("parsePort(%q) error %v, want invalid port", in, err)
		}
	}
}

func TestDefaultName(t *testing.T) {
	for _, tc := range []struct {
		spec listenSpec
		want string
	}{
		{listenSpec{network: "tcp", addr: ":8080"}, "tcp-8080"},
		{listenSpec{network: "tcp", addr: "[::]:80"}, "tcp-80"},
		{listenSpec{network: "tcp", addr: "[::1]:80"}, "tcp-[__1]-80"},
		{listenSpec{network: "udp", addr: "10.0.0.1:53"}, "udp-10.0.0.1-53"},
		{listenSpec{network: "unix", addr: "/run/x:y=z.sock"}, "unix-x_y_z.sock"},
		{listenSpec{network: "unix", addr: "/tmp/\xffé.sock"}, "unix-___.sock"},
	} {
		if got := defaultName(tc.spec); got != tc.want {
			t.Errorf("defaultName(%+v) = %q, want %q", tc.spec, got, tc.want)
		}
	}
}

// lstSpecs parses -l values or fails the test.
func lstSpecs(t *testing.T, in ...string) []listenSpec {
	t.Helper()
	var specs []listenSpec
	for _, s := range in {
		spec, err := parseListen(s)
		if err != nil {
			t.Fatal(err)
		}
		specs = append(specs, spec)
	}
	return specs
}

// lstOpen opens listeners and closes them when the test ends.
func lstOpen(t *testing.T, in ...string) []*listener {
	t.Helper()
	ls, err := openListeners(lstSpecs(t, in...), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeListeners(ls) })
	return ls
}

func lstFcntl(fd, cmd, arg int) (int, error) {
	r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), uintptr(cmd), uintptr(arg))
	if errno != 0 {
		return -1, errno
	}
	return int(r), nil
}

// lstCheckFlags asserts that fd is blocking and close-on-exec.
func lstCheckFlags(t *testing.T, fd int) {
	t.Helper()
	fl, err := lstFcntl(fd, syscall.F_GETFL, 0)
	if err != nil {
		t.Fatalf("fcntl(%d, F_GETFL): %v", fd, err)
	}
	if fl&syscall.O_NONBLOCK != 0 {
		t.Errorf("fd %d is non-blocking", fd)
	}
	fdfl, err := lstFcntl(fd, syscall.F_GETFD, 0)
	if err != nil {
		t.Fatalf("fcntl(%d, F_GETFD): %v", fd, err)
	}
	if fdfl&syscall.FD_CLOEXEC == 0 {
		t.Errorf("fd %d is not close-on-exec", fd)
	}
}

// lstAccept dials addr and accepts the connection on fd, checking that bytes
// written by the client arrive.
func lstAccept(t *testing.T, fd int, network, addr string) {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s %s: %v", network, addr, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	// The connection is already queued, so a blocking accept returns at once.
	nfd, _, err := syscall.Accept(fd)
	if err != nil {
		t.Fatalf("accept on %s: %v", addr, err)
	}
	defer syscall.Close(nfd)
	buf := make([]byte, 4)
	n, err := syscall.Read(nfd, buf)
	if err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("read from accepted connection: %q, %v", buf[:n], err)
	}
}

func lstPort(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	if n == 0 {
		t.Fatalf("address %s has port 0", addr)
	}
	return n
}

func lstHaveIPv6() bool {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

func TestOpenTCPLoopback(t *testing.T) {
	ls := lstOpen(t, "127.0.0.1:0")
	l := ls[0]
	if l.spec.addr != "127.0.0.1:0" || l.spec.text != "127.0.0.1:0" {
		t.Errorf("spec changed: %+v", l.spec)
	}
	if !strings.HasPrefix(l.addrString(), "127.0.0.1:") {
		t.Errorf("addrString() = %q", l.addrString())
	}
	lstPort(t, l.addrString())
	lstCheckFlags(t, l.fd)
	if v, err := syscall.GetsockoptInt(l.fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR); err != nil || v == 0 {
		t.Errorf("SO_REUSEADDR = %d, %v", v, err)
	}
	lstAccept(t, l.fd, "tcp", l.addrString())
}

func TestOpenDualStack(t *testing.T) {
	l := lstOpen(t, ":0")[0]
	lstCheckFlags(t, l.fd)
	port := lstPort(t, l.addrString())
	lstAccept(t, l.fd, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if !lstHaveIPv6() {
		t.Log("no IPv6 on this machine: checked the IPv4 fallback only")
		return
	}
	if want := fmt.Sprintf("[::]:%d", port); l.addrString() != want {
		t.Errorf("addrString() = %q, want %q", l.addrString(), want)
	}
	lstAccept(t, l.fd, "tcp", fmt.Sprintf("[::1]:%d", port))
}

func TestOpenIPv6Only(t *testing.T) {
	if !lstHaveIPv6() {
		t.Skip("no IPv6 on this machine")
	}
	l := lstOpen(t, "[::]:0")[0]
	if v, err := syscall.GetsockoptInt(l.fd, syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY); err != nil || v != 1 {
		t.Errorf("IPV6_V6ONLY = %d, %v; want 1 for an explicit [::]", v, err)
	}
	lstAccept(t, l.fd, "tcp", fmt.Sprintf("[::1]:%d", lstPort(t, l.addrString())))
}

func TestOpenUDP(t *testing.T) {
	l := lstOpen(t, "udp:127.0.0.1:0")[0]
	lstCheckFlags(t, l.fd)
	if typ, err := syscall.GetsockoptInt(l.fd, syscall.SOL_SOCKET, syscall.SO_TYPE); err != nil || typ != syscall.SOCK_DGRAM {
		t.Fatalf("SO_TYPE = %d, %v", typ, err)
	}
	c, err := net.Dial("udp", l.addrString())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	tv := syscall.NsecToTimeval(int64(5 * time.Second))
	if err := syscall.SetsockoptTimeval(l.fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, _, err := syscall.Recvfrom(l.fd, buf, 0)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("recvfrom: %q, %v", buf[:n], err)
	}
}

// lstTempDir is a short directory: unix socket paths have a small size limit.
func lstTempDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "pfl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestOpenUnix(t *testing.T) {
	dir := lstTempDir(t)

	t.Run("fresh", func(t *testing.T) {
		path := filepath.Join(dir, "fresh.sock")
		old := syscall.Umask(0o027)
		ls, err := openListeners(lstSpecs(t, "unix:"+path), 16)
		syscall.Umask(old)
		if err != nil {
			t.Fatal(err)
		}
		l := ls[0]
		lstCheckFlags(t, l.fd)
		if l.addrString() != path {
			t.Errorf("addrString() = %q, want %q", l.addrString(), path)
		}
		fi, err := os.Lstat(path)
		if err != nil || fi.Mode().Type() != os.ModeSocket {
			t.Fatalf("socket file: %v, %v", fi, err)
		}
		if perm := fi.Mode().Perm() & 0o666; perm != 0o640 {
			t.Errorf("socket file mode %v with umask 027, want rw-r----- bits", fi.Mode().Perm())
		}
		lstAccept(t, l.fd, "unix", path)
		closeListeners(ls)
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket file left after closeListeners: %v", err)
		}
		if l.fd != -1 {
			t.Errorf("fd = %d after close", l.fd)
		}
		closeListeners(ls) // idempotent
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
		lstAccept(t, l.fd, "unix", path)
	})

	t.Run("live", func(t *testing.T) {
		path := filepath.Join(dir, "live.sock")
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		_, err = openListeners(lstSpecs(t, "unix:"+path), 0)
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
		_, err := openListeners(lstSpecs(t, "unix:"+path), 0)
		if err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Fatalf("open over a regular file: %v, want not a socket", err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != "keep me" {
			t.Errorf("regular file changed: %q, %v", b, err)
		}
	})

	t.Run("replaced file kept", func(t *testing.T) {
		path := filepath.Join(dir, "replaced.sock")
		ls, err := openListeners(lstSpecs(t, "unix:"+path), 0)
		if err != nil {
			t.Fatal(err)
		}
		// Someone else puts a file in place of ours: closing must not remove it.
		os.Remove(path)
		if err := os.WriteFile(path, []byte("theirs"), 0o644); err != nil {
			t.Fatal(err)
		}
		closeListeners(ls)
		if b, err := os.ReadFile(path); err != nil || string(b) != "theirs" {
			t.Errorf("closeListeners removed a file it did not create: %q, %v", b, err)
		}
	})

	t.Run("path too long", func(t *testing.T) {
		path := "/tmp/" + strings.Repeat("x", 120)
		_, err := openListeners(lstSpecs(t, "unix:"+path), 0)
		if err == nil || !strings.Contains(err.Error(), "bytes long") {
			t.Fatalf("open with a long path: %v", err)
		}
	})
}

// lstOpenFDs lists this process's open descriptors.
func lstOpenFDs(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir("/dev/fd")
	if err != nil {
		t.Fatal(err)
	}
	var fds []string
	for _, e := range ents {
		fds = append(fds, e.Name())
	}
	return fds
}

func TestOpenAllOrNothing(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	sock := filepath.Join(lstTempDir(t), "first.sock")
	specs := lstSpecs(t, "unix:"+sock, "udp:127.0.0.1:0", taken.Addr().String())

	before := lstOpenFDs(t)
	ls, err := openListeners(specs, 0)
	if err == nil {
		closeListeners(ls)
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
		if _, err := l.reuseportSocket(0); err == nil || !strings.Contains(err.Error(), "--mode shared") {
			t.Errorf("reuseportSocket on %s: %v, want an error pointing to --mode shared", runtime.GOOS, err)
		}
		if _, err := openListenersReuseport(lstSpecs(t, ":0"), 0); err == nil || !strings.Contains(err.Error(), "--mode shared") {
			t.Errorf("openListenersReuseport on %s: %v", runtime.GOOS, err)
		}
		return
	}
	ls, err := openListenersReuseport(lstSpecs(t, ":0", "udp:127.0.0.1:0", "unix:"+filepath.Join(lstTempDir(t), "rp.sock")), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer closeListeners(ls)
	tcp, udp, unix := ls[0], ls[1], ls[2]

	fd, err := tcp.reuseportSocket(0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	lstCheckFlags(t, fd)
	sa, err := syscall.Getsockname(fd)
	if err != nil || sockaddrString(sa) != tcp.addrString() {
		t.Fatalf("second socket bound to %v (%v), want %s", sockaddrString(sa), err, tcp.addrString())
	}
	// With the first socket gone, the kernel sends every connection to the
	// second, over IPv4 too: it is dual-stack like the first.
	syscall.Close(tcp.fd)
	tcp.fd = -1
	lstAccept(t, fd, "tcp", fmt.Sprintf("127.0.0.1:%d", lstPort(t, tcp.addrString())))

	ufd, err := udp.reuseportSocket(0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(ufd)
	if sa, err := syscall.Getsockname(ufd); err != nil || sockaddrString(sa) != udp.addrString() {
		t.Errorf("second udp socket bound to %v (%v), want %s", sockaddrString(sa), err, udp.addrString())
	}

	if _, err := unix.reuseportSocket(0); err == nil || !strings.Contains(err.Error(), "only tcp and udp") {
		t.Errorf("reuseportSocket on unix: %v", err)
	}
	plain := lstOpen(t, "127.0.0.1:0")[0]
	if _, err := plain.reuseportSocket(0); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("reuseportSocket on a listener without SO_REUSEPORT: %v, want EADDRINUSE", err)
	}
}

func TestAutoWorkers(t *testing.T) {
	n := autoWorkers()
	if n < 1 || n > runtime.NumCPU() {
		t.Fatalf("autoWorkers() = %d, NumCPU = %d", n, runtime.NumCPU())
	}
	t.Logf("autoWorkers() = %d, runtime.NumCPU() = %d", n, runtime.NumCPU())
}

// adoptReport is what the TestAdoptSystemdChild helper process prints.
type adoptReport struct {
	Err       string
	Listeners []adoptedInfo
	Env       []string // LISTEN_* variables still set after adoptSystemd
	Accepted  bool     // a queued connection was accepted on the first listener
}

type adoptedInfo struct {
	Name, Network, Addr, Text string
	FD                        int
	NonBlock, CloExec         bool
}

// TestAdoptSystemdChild is the helper process of TestAdoptSystemd, run by
// re-executing the test binary as os/exec's own tests do.
func TestAdoptSystemdChild(t *testing.T) {
	if os.Getenv("PREFORK_TEST_ROLE") != "adopt" {
		t.Skip("helper process for TestAdoptSystemd")
	}
	if os.Getenv("PREFORK_TEST_LISTEN_PID_SELF") != "" {
		os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	}
	syscall.SetNonblock(3, true) // adoptSystemd must make it blocking again
	var rep adoptReport
	ls, err := adoptSystemd()
	if err != nil {
		rep.Err = err.Error()
	}
	for _, l := range ls {
		fl, _ := lstFcntl(l.fd, syscall.F_GETFL, 0)
		fdfl, _ := lstFcntl(l.fd, syscall.F_GETFD, 0)
		rep.Listeners = append(rep.Listeners, adoptedInfo{
			l.spec.name, l.spec.network, l.addrString(), l.spec.text, l.fd, fl&syscall.O_NONBLOCK != 0, fdfl&syscall.FD_CLOEXEC != 0})
	}
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		if _, ok := os.LookupEnv(v); ok {
			rep.Env = append(rep.Env, v)
		}
	}
	if len(ls) > 0 && os.Getenv("PREFORK_TEST_ACCEPT") != "" {
		if nfd, _, err := syscall.Accept(ls[0].fd); err == nil {
			rep.Accepted = true
			syscall.Close(nfd)
		}
	}
	json.NewEncoder(os.Stdout).Encode(rep)
	os.Exit(0)
}

func TestAdoptSystemd(t *testing.T) {
	sock := filepath.Join(lstTempDir(t), "adopt.sock")
	ls := lstOpen(t, "127.0.0.1:0", "unix:"+sock, "udp:127.0.0.1:0")
	var files []*os.File
	for _, l := range ls {
		// A duplicate for ExtraFiles: an *os.File owns and closes its descriptor.
		dup, err := lstFcntl(l.fd, syscall.F_DUPFD_CLOEXEC, 10)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, os.NewFile(uintptr(dup), l.addrString()))
	}
	notSocket, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, notSocket)
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()

	run := func(t *testing.T, nfiles int, env ...string) adoptReport {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestAdoptSystemdChild$", "-test.count=1")
		cmd.ExtraFiles = files[:nfiles]
		for _, e := range os.Environ() {
			if !strings.HasPrefix(e, "LISTEN_") {
				cmd.Env = append(cmd.Env, e)
			}
		}
		// With -race, a child would otherwise sleep a second at exit.
		cmd.Env = append(cmd.Env, "PREFORK_TEST_ROLE=adopt", "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
		cmd.Env = append(cmd.Env, env...)
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("helper process: %v\n%s", err, out)
		}
		var rep adoptReport
		if err := json.Unmarshal(out, &rep); err != nil {
			t.Fatalf("helper output %q: %v", out, err)
		}
		if len(rep.Env) != 0 {
			t.Errorf("variables still set after adoptSystemd: %v", rep.Env)
		}
		return rep
	}

	t.Run("named", func(t *testing.T) {
		c, err := net.Dial("tcp", ls[0].addrString()) // queued for the child to accept
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		rep := run(t, 3, "PREFORK_TEST_LISTEN_PID_SELF=1", "PREFORK_TEST_ACCEPT=1", "LISTEN_FDS=3", "LISTEN_FDNAMES=web:admin:dns")
		if rep.Err != "" {
			t.Fatal(rep.Err)
		}
		if len(rep.Listeners) != 3 {
			t.Fatalf("adopted %d listeners, want 3: %+v", len(rep.Listeners), rep.Listeners)
		}
		for i, want := range []struct{ name, network, text string }{
			{"web", "tcp", ls[0].addrString()},
			{"admin", "unix", "unix:" + sock},
			{"dns", "udp", ls[2].addrString()},
		} {
			got := rep.Listeners[i]
			if got.FD != 3+i || got.Name != want.name || got.Network != want.network || got.Addr != ls[i].addrString() || got.Text != want.text {
				t.Errorf("listener %d = %+v, want fd %d %s %s %s", i, got, 3+i, want.name, want.network, ls[i].addrString())
			}
			if got.NonBlock || !got.CloExec {
				t.Errorf("listener %d: non-blocking %v, close-on-exec %v", i, got.NonBlock, got.CloExec)
			}
		}
		if !rep.Accepted {
			t.Error("child could not accept on the adopted tcp socket")
		}
	})

	t.Run("unnamed", func(t *testing.T) {
		rep := run(t, 2, "PREFORK_TEST_LISTEN_PID_SELF=1", "LISTEN_FDS=2")
		if rep.Err != "" {
			t.Fatal(rep.Err)
		}
		var names []string
		for _, l := range rep.Listeners {
			names = append(names, l.Name)
		}
		want := []string{"tcp-127.0.0.1-" + strconv.Itoa(lstPort(t, ls[0].addrString())), "unix-adopt.sock"}
		if !slices.Equal(names, want) {
			t.Errorf("names %q, want %q", names, want)
		}
	})

	t.Run("other pid", func(t *testing.T) {
		rep := run(t, 2, "LISTEN_PID=1", "LISTEN_FDS=2", "LISTEN_FDNAMES=a:b")
		if rep.Err != "" || len(rep.Listeners) != 0 {
			t.Errorf("adopted %+v, %q for another process's LISTEN_PID", rep.Listeners, rep.Err)
		}
	})

	t.Run("absent", func(t *testing.T) {
		rep := run(t, 0)
		if rep.Err != "" || len(rep.Listeners) != 0 {
			t.Errorf("adopted %+v, %q without variables", rep.Listeners, rep.Err)
		}
	})

	for _, tc := range []struct {
		name, errText string
		nfiles        int
		env           []string
	}{
		{"bad count", `malformed LISTEN_FDS="two"`, 2, []string{"PREFORK_TEST_LISTEN_PID_SELF=1", "LISTEN_FDS=two"}},
		{"bad pid", `malformed LISTEN_PID="me"`, 2, []string{"LISTEN_PID=me", "LISTEN_FDS=2"}},
		{"names mismatch", "2 names for LISTEN_FDS=3", 3, []string{"PREFORK_TEST_LISTEN_PID_SELF=1", "LISTEN_FDS=3", "LISTEN_FDNAMES=a:b"}},
		{"not a socket", "fd 6: getsockopt SO_TYPE", 4, []string{"PREFORK_TEST_LISTEN_PID_SELF=1", "LISTEN_FDS=4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := run(t, tc.nfiles, tc.env...)
			if !strings.Contains(rep.Err, tc.errText) {
				t.Errorf("error %q, want %q", rep.Err, tc.errText)
			}
		})
	}
}

func FuzzParseListen(f *testing.F) {
	for _, s := range []string{":8080", "web=127.0.0.1:80", "[::1]:0", "unix:/run/a.sock", "n=unix:x=y",
		"udp::53", "dns=udp:[fe80::1%eth0]:53", "a:b=:1", "=:1", "udp:", "unix:", "[::1]", "host:99999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		spec, err := parseListen(s)
		if err != nil {
			return
		}
		if spec.network != "tcp" && spec.network != "udp" && spec.network != "unix" {
			t.Fatalf("parseListen(%q): network %q", s, spec.network)
		}
		if spec.addr == "" || spec.text == "" {
			t.Fatalf("parseListen(%q): empty address in %+v", s, spec)
		}
		if err := checkName(spec.name); err != nil {
			t.Fatalf("parseListen(%q): name: %v", s, err)
		}
		again, err := parseListen(spec.name + "=" + spec.text)
		if err != nil || again != spec {
			t.Fatalf("parseListen(%q) = %+v, but its NAME=TEXT gives %+v, %v", s, spec, again, err)
		}
	})
}
