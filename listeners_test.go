//go:build linux || darwin

// This file tests listeners.go on real sockets: parsing, binding, flags of the
// descriptors, unix socket files, SO_REUSEPORT, and systemd adoption in a child.
package main

import (
	"net"
	"os"
	"runtime"
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

// lstCheckFlags asserts that fd is blocking and close-on-exec.
func lstCheckFlags(t *testing.T, fd int) {
	t.Helper()
	fl, err := fcntl(fd, syscall.F_GETFL, 0)
	if err != nil {
		t.Fatalf("fcntl(%d, F_GETFL): %v", fd, err)
	}
	if fl&syscall.O_NONBLOCK != 0 {
		t.Errorf("fd %d is non-blocking", fd)
	}
	fdfl, err := fcntl(fd, syscall.F_GETFD, 0)
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

// lstTempDir is a short directory: unix socket paths have a small size limit.
func lstTempDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "pfl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
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

func TestAutoWorkers(t *testing.T) {
	n := autoWorkers()
	if n < 1 || n > runtime.NumCPU() {
		t.Fatalf("autoWorkers() = %d, NumCPU = %d", n, runtime.NumCPU())
	}
	t.Logf("autoWorkers() = %d, runtime.NumCPU() = %d", n, runtime.NumCPU())
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
