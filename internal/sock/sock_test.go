//go:build linux || darwin

// This file tests sock.go: parsing -p and -l and the default names, and holds
// the helpers of the package's tests on real sockets.
package sock

import (
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseSpec(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Spec
	}{
		{":8080", Spec{"tcp-8080", "tcp", ":8080", ":8080"}},
		{":0", Spec{"tcp-0", "tcp", ":0", ":0"}},
		{"127.0.0.1:80", Spec{"tcp-127.0.0.1-80", "tcp", "127.0.0.1:80", "127.0.0.1:80"}},
		{"0.0.0.0:080", Spec{"tcp-80", "tcp", "0.0.0.0:80", "0.0.0.0:080"}},
		{"[::1]:8080", Spec{"tcp-[__1]-8080", "tcp", "[::1]:8080", "[::1]:8080"}},
		{"[fe80::1%eth0]:80", Spec{"tcp-[fe80__1%eth0]-80", "tcp", "[fe80::1%eth0]:80", "[fe80::1%eth0]:80"}},
		{"localhost:65535", Spec{"tcp-localhost-65535", "tcp", "localhost:65535", "localhost:65535"}},
		{"web=:8080", Spec{"web", "tcp", ":8080", ":8080"}},
		{"my web=[::]:443", Spec{"my web", "tcp", "[::]:443", "[::]:443"}},
		{"unix:/run/app.sock", Spec{"unix-app.sock", "unix", "/run/app.sock", "unix:/run/app.sock"}},
		{"unix:rel/a=b.sock", Spec{"unix-a_b.sock", "unix", "rel/a=b.sock", "unix:rel/a=b.sock"}},
		{"admin=unix:/run/admin.sock", Spec{"admin", "unix", "/run/admin.sock", "unix:/run/admin.sock"}},
		{"udp::5353", Spec{"udp-5353", "udp", ":5353", "udp::5353"}},
		{"dns=udp:127.0.0.1:53", Spec{"dns", "udp", "127.0.0.1:53", "udp:127.0.0.1:53"}},
		{"udp:[::1]:53", Spec{"udp-[__1]-53", "udp", "[::1]:53", "udp:[::1]:53"}},
	} {
		got, err := ParseSpec(tc.in)
		if err != nil {
			t.Errorf("ParseSpec(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ParseSpec(%q) = %+v, want %+v", tc.in, got, tc.want)
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
		_, err := ParseSpec(tc.in)
		if err == nil {
			t.Errorf("ParseSpec(%q) succeeded, want error with %q", tc.in, tc.errText)
			continue
		}
		if !strings.Contains(err.Error(), tc.errText) {
			t.Errorf("ParseSpec(%q) error %q, want it to contain %q", tc.in, err, tc.errText)
		}
		if !strings.HasPrefix(err.Error(), "invalid listener ") {
			t.Errorf("ParseSpec(%q) error %q does not name the listener", tc.in, err)
		}
	}
}

func TestParsePort(t *testing.T) {
	for in, want := range map[string]Spec{
		"8080":  {"tcp-8080", "tcp", ":8080", "8080"},
		"0":     {"tcp-0", "tcp", ":0", "0"},
		"65535": {"tcp-65535", "tcp", ":65535", "65535"},
		"01":    {"tcp-1", "tcp", ":1", "01"},
	} {
		got, err := ParsePort(in)
		if err != nil || got != want {
			t.Errorf("ParsePort(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "http", "-1", "65536", ":80", "80 ", "1e3"} {
		if _, err := ParsePort(in); err == nil || !strings.Contains(err.Error(), "invalid port") {
			t.Errorf("ParsePort(%q) error %v, want invalid port", in, err)
		}
	}
}

func TestDefaultName(t *testing.T) {
	for _, tc := range []struct {
		spec Spec
		want string
	}{
		{Spec{Network: "tcp", Addr: ":8080"}, "tcp-8080"},
		{Spec{Network: "tcp", Addr: "[::]:80"}, "tcp-80"},
		{Spec{Network: "tcp", Addr: "[::1]:80"}, "tcp-[__1]-80"},
		{Spec{Network: "udp", Addr: "10.0.0.1:53"}, "udp-10.0.0.1-53"},
		{Spec{Network: "unix", Addr: "/run/x:y=z.sock"}, "unix-x_y_z.sock"},
		{Spec{Network: "unix", Addr: "/tmp/\xffé.sock"}, "unix-___.sock"},
	} {
		if got := tc.spec.DefaultName(); got != tc.want {
			t.Errorf("DefaultName(%+v) = %q, want %q", tc.spec, got, tc.want)
		}
	}
}

// lstSpecs parses -l values or fails the test.
func lstSpecs(t *testing.T, in ...string) []Spec {
	t.Helper()
	var specs []Spec
	for _, s := range in {
		spec, err := ParseSpec(s)
		if err != nil {
			t.Fatal(err)
		}
		specs = append(specs, spec)
	}
	return specs
}

// lstOpen opens listeners and closes them when the test ends.
func lstOpen(t *testing.T, in ...string) []*Listener {
	t.Helper()
	ls, err := Bind(lstSpecs(t, in...), 0, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Close(ls...) })
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

func fcntl(fd, cmd, arg int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), uintptr(cmd), uintptr(arg))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{":8080", "web=127.0.0.1:80", "[::1]:0", "unix:/run/a.sock", "n=unix:x=y",
		"udp::53", "dns=udp:[fe80::1%eth0]:53", "a:b=:1", "=:1", "udp:", "unix:", "[::1]", "host:99999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		spec, err := ParseSpec(s)
		if err != nil {
			return
		}
		if spec.Network != "tcp" && spec.Network != "udp" && spec.Network != "unix" {
			t.Fatalf("ParseSpec(%q): network %q", s, spec.Network)
		}
		if spec.Addr == "" || spec.Text == "" {
			t.Fatalf("ParseSpec(%q): empty address in %+v", s, spec)
		}
		if err := checkName(spec.Name); err != nil {
			t.Fatalf("ParseSpec(%q): name: %v", s, err)
		}
		again, err := ParseSpec(spec.Name + "=" + spec.Text)
		if err != nil || again != spec {
			t.Fatalf("ParseSpec(%q) = %+v, but its NAME=TEXT gives %+v, %v", s, spec, again, err)
		}
	})
}
