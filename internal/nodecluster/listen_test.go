//go:build linux || darwin

// Tests of how prefork matches a Node worker's listen() or dgram bind() to
// its own listeners, and how it binds what none of them serves: the pure
// matching rule, the sockets as Node's primary binds them, and the protocol
// with a fake worker (real node apps: node_apps_test.go at the top).
package nodecluster

import (
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/prefork/prefork/internal/sock"
)

// haveIPv6 reports whether this machine can bind IPv6 loopback.
func haveIPv6() bool {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

func TestNodeMatchListener(t *testing.T) {
	v4 := func(ip string, port int) offer {
		return offer{network: "tcp", ip: net.ParseIP(ip).To4(), port: port, family: 4}
	}
	v6 := func(ip string, port int, dual bool) offer {
		return offer{network: "tcp", ip: net.ParseIP(ip), port: port, family: 6, dual: dual}
	}
	udp := func(o offer) offer { o.network = "udp"; return o }
	dualAny, v6Any, v4Any := v6("::", 80, true), v6("::", 80, false), v4("0.0.0.0", 80)
	lo4, lo6 := v4("127.0.0.1", 80), v6("::1", 80, false)
	tcp := func(host string) ask { return ask{network: "tcp", host: host, port: 80} }
	udpAsk := func(host string, family int) ask {
		return ask{network: "udp", host: host, port: 80, family: family}
	}
	for _, c := range []struct {
		name   string
		ask    ask
		offers []offer
		want   int
		exact  bool
	}{
		{"no host takes a wildcard first", tcp(""), []offer{lo4, dualAny}, 1, false},
		{"no host takes any address", tcp(""), []offer{lo4, lo6}, 0, false},
		{"another port is no match", tcp(""), []offer{v4("127.0.0.1", 81)}, -1, false},
		{"port 0 is never prefork's", ask{network: "tcp", port: 0}, []offer{v4("0.0.0.0", 0)}, -1, false},
		{"exact address", tcp("127.0.0.1"), []offer{dualAny, lo4}, 1, true},
		{"exact wildcard", tcp("0.0.0.0"), []offer{dualAny, v4Any}, 1, true},
		{"IPv4 host on a dual-stack wildcard", tcp("127.0.0.1"), []offer{dualAny}, 0, false},
		{"IPv4 host not on an IPv6-only wildcard", tcp("127.0.0.1"), []offer{v6Any}, -1, false},
		{"IPv6 host not on an IPv4 wildcard", tcp("::1"), []offer{v4Any}, -1, false},
		{"IPv6 host on an IPv6-only wildcard", tcp("::1"), []offer{v4Any, v6Any}, 1, false},
		{"v4-mapped host is IPv4", tcp("::ffff:127.0.0.1"), []offer{v6Any, v4Any}, 1, false},
		{"v4-mapped host equals the IPv4 address", tcp("::ffff:127.0.0.1"), []offer{lo4}, 0, true},
		{"another specific address is no match", tcp("127.0.0.2"), []offer{lo4, lo6}, -1, false},
		{"0.0.0.0 takes a specific address (the operator's)", tcp("0.0.0.0"), []offer{lo4}, 0, false},
		{":: takes an IPv4 address over TCP", tcp("::"), []offer{lo4}, 0, false},
		{"a wildcard prefers a wildcard", tcp("::"), []offer{lo4, v4Any}, 1, false},
		{"the first listed wins a tie", tcp(""), []offer{v4Any, dualAny}, 0, false},
		{"a zone is not part of the address", tcp("fe80::1%eth0"), []offer{v6("fe80::1", 80, false)}, 0, true},
		{"udp4 wildcard takes 127.0.0.1", udpAsk("0.0.0.0", 4), []offer{udp(lo4)}, 0, false},
		{"udp4 never gets an IPv6 socket", udpAsk("0.0.0.0", 4), []offer{udp(dualAny)}, -1, false},
		{"udp4 skips an IPv6 socket for an IPv4 one", udpAsk("0.0.0.0", 4), []offer{udp(v6Any), udp(v4Any)}, 1, true},
		{"udp6 never gets an IPv4 socket", udpAsk("::", 6), []offer{udp(v4Any), udp(lo4)}, -1, false},
		{"udp6 takes a dual-stack socket", udpAsk("::", 6), []offer{udp(dualAny)}, 0, true},
		{"udp6 wildcard takes ::1", udpAsk("::", 6), []offer{udp(lo6)}, 0, false},
		{"tcp is not udp", udpAsk("0.0.0.0", 4), []offer{v4Any}, -1, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, exact := matchListener(c.ask, c.offers)
			if got != c.want || got >= 0 && exact != c.exact {
				t.Fatalf("matchListener(%+v) = %d, exact %v; want %d, exact %v", c.ask, got, exact, c.want, c.exact)
			}
		})
	}
}

// sockInfo is the family and IPV6_V6ONLY of a socket (v6only -1 for IPv4).
func sockInfo(t *testing.T, fd int) (family, v6only int) {
	t.Helper()
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := sa.(*syscall.SockaddrInet4); ok {
		return 4, -1
	}
	v, err := syscall.GetsockoptInt(fd, syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY)
	if err != nil {
		t.Fatal(err)
	}
	return 6, v
}

// systemV6only is the IPV6_V6ONLY an IPv6 socket gets by default here.
func systemV6only(t *testing.T) int {
	fd, err := syscall.Socket(syscall.AF_INET6, syscall.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	v, err := syscall.GetsockoptInt(fd, syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// anyV6only: a socket whose IPV6_V6ONLY does not matter.
const anyV6only = -2

// Node's primary binds listen(port, '::') dual-stack unless the app asked for
// ipv6Only (flags & 1), where prefork's -l [::]:PORT is IPv6-only.
func TestNodeBindForAsNodeDoes(t *testing.T) {
	if !haveIPv6() {
		t.Skip("no IPv6 on this machine")
	}
	sys := systemV6only(t)
	for _, c := range []struct {
		network, addr, at string
		flags             int
		family, v6only    int
	}{
		{"tcp", "", "4", 0, 6, 0},
		{"tcp", "", "4", 1, 6, 1}, // Node 22+: listen({port, ipv6Only: true})
		{"tcp", "::", "6", 0, 6, 0},
		{"tcp", "::", "6", 1, 6, 1},
		{"tcp", "::1", "6", 0, 6, anyV6only}, // Linux makes it IPv6-only itself
		{"tcp", "127.0.0.1", "4", 0, 4, -1},
		{"tcp", "::ffff:127.0.0.1", "6", 0, 6, 0},
		{"udp", "::", `"udp6"`, 0, 6, sys}, // libuv leaves the system default
		{"udp", "::", `"udp6"`, 1, 6, 1},
		{"udp", "::", `"udp6"`, 4, 6, sys}, // 4 is reuseAddr, not ipv6Only
		{"udp", "::ffff:127.0.0.1", `"udp6"`, 0, 6, sys},
		{"udp", "0.0.0.0", `"udp4"`, 0, 4, -1},
	} {
		name := fmt.Sprintf("%s/%q/%s/flags=%d", c.network, c.addr, c.at, c.flags)
		t.Run(name, func(t *testing.T) {
			b, err := nodeBindFor(c.network, c.addr, 0, c.at, c.flags)
			if err != nil {
				t.Fatal(err)
			}
			l, err := b.open(0, false)
			if err != nil {
				t.Fatal(err)
			}
			defer sock.Close(l)
			if f, v := sockInfo(t, l.FD); f != c.family || v != c.v6only && c.v6only != anyV6only {
				t.Fatalf("%s: IPv%d socket with IPV6_V6ONLY %d; want IPv%d with %d", l.Bound(), f, v, c.family, c.v6only)
			}
		})
	}
}

// bufferLogger is a logger whose lines a test reads from b.
func bufferLogger(b *syncBuffer) *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// freeBothPort is a port free for TCP and for UDP, IPv4 and IPv6.
func freeBothPort(t *testing.T) int {
	t.Helper()
	for range 20 {
		port := freePort(t)
		if c, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
			c.Close()
			return port
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return 0
}

// queryReply sends one queryServer and reads the reply: the descriptor, or -1 and the errno.
func queryReply(t *testing.T, f *fakeWorker, seq int, fields string) (int, float64) {
	t.Helper()
	f.write(`{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,` + fields + `,"seq":` + strconv.Itoa(seq) + `}`)
	m, fd := f.read()
	if fd >= 0 {
		f.write(`{"cmd":"NODE_HANDLE_ACK"}`)
		return fd, 0
	}
	errno, _ := m["errno"].(float64)
	return -1, errno
}

// A wildcard host (or dgram's default one) takes prefork's listener on that
// port whatever its address, and says so once.
func TestNodeQueryServerWildcardTakesOwnListener(t *testing.T) {
	port := strconv.Itoa(freeBothPort(t))
	nc, ls := newTestCluster(t, "127.0.0.1:"+port, "udp:127.0.0.1:"+port)
	var log syncBuffer
	nc.log = bufferLogger(&log)
	f, _ := newFakeWorker(t, nc, 0)
	for i, q := range []struct{ fields, want string }{
		{`"address":"0.0.0.0","port":` + port + `,"addressType":4,"flags":0`, ls[0].Bound()},
		{`"address":"::","port":` + port + `,"addressType":6,"flags":0`, ls[0].Bound()},
		{`"address":null,"port":` + port + `,"addressType":4`, ls[0].Bound()},
		{`"address":"0.0.0.0","port":` + port + `,"addressType":"udp4","fd":-1,"flags":0`, ls[1].Bound()},
	} {
		fd, errno := queryReply(t, f, i+1, q.fields)
		if fd < 0 {
			t.Fatalf("{%s}: errno %v; want prefork's listener %s", q.fields, errno, q.want)
		}
		sa, _ := syscall.Getsockname(fd)
		typ, _ := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TYPE)
		syscall.Close(fd)
		if got := sock.FormatSockaddr(sa); got != q.want || (typ == syscall.SOCK_DGRAM) != (i == 3) {
			t.Fatalf("{%s}: got %s (type %d); want prefork's listener %s", q.fields, got, typ, q.want)
		}
	}
	if n := strings.Count(log.String(), "served by prefork's listener"); n != 2 {
		t.Fatalf("logged %d lines on serving another address; want one per listener:\n%s", n, log.String())
	}
}

// A udp4 socket never gets an IPv6 socket (its sends would fail), nor udp6 an IPv4 one.
func TestNodeQueryServerUDPFamily(t *testing.T) {
	if !haveIPv6() {
		t.Skip("no IPv6 on this machine")
	}
	port := strconv.Itoa(freeBothPort(t))
	nc, ls := newTestCluster(t, "udp:[::]:"+port, "udp:0.0.0.0:"+port)
	f, _ := newFakeWorker(t, nc, 0)
	for i, q := range []struct {
		at, addr string
		want     *sock.Listener
	}{{"udp4", "0.0.0.0", ls[1]}, {"udp6", "::", ls[0]}} {
		fd, errno := queryReply(t, f, i+1, `"address":"`+q.addr+`","port":`+port+`,"addressType":"`+q.at+`","fd":-1,"flags":0`)
		if fd < 0 {
			t.Fatalf("%s: errno %v; want %s", q.at, errno, q.want.Bound())
		}
		sa, _ := syscall.Getsockname(fd)
		syscall.Close(fd)
		if got := sock.FormatSockaddr(sa); got != q.want.Bound() {
			t.Fatalf("%s got %s; want %s", q.at, got, q.want.Bound())
		}
	}

	// Only a dual-stack IPv6 socket on the port: a udp4 bind fails as under
	// Node's primary, and the log says why.
	port = strconv.Itoa(freeBothPort(t))
	nc, _ = newTestCluster(t, "udp::"+port)
	var log syncBuffer
	nc.log = bufferLogger(&log)
	f, _ = newFakeWorker(t, nc, 0)
	fd, errno := queryReply(t, f, 1, `"address":"0.0.0.0","port":`+port+`,"addressType":"udp4","fd":-1,"flags":0`)
	if fd >= 0 || errno != -float64(syscall.EADDRINUSE) {
		t.Fatalf("udp4 on a port held by an IPv6 socket: fd %d errno %v; want EADDRINUSE", fd, errno)
	}
	if !strings.Contains(log.String(), "which a udp4 socket cannot use") {
		t.Fatalf("no hint on the family in the log:\n%s", log.String())
	}
}

// A socket bound on request for '::' takes IPv4 too, unless ipv6Only.
func TestNodeQueryServerDualStackOnRequest(t *testing.T) {
	if !haveIPv6() {
		t.Skip("no IPv6 on this machine")
	}
	nc, _ := newTestCluster(t)
	f, _ := newFakeWorker(t, nc, 0)
	for i, flags := range []int{0, 1} {
		fields := fmt.Sprintf(`"address":"::","port":%d,"addressType":6,"flags":%d,"backlog":0`, freePort(t), flags)
		fd, errno := queryReply(t, f, i+1, fields)
		if fd < 0 {
			t.Fatalf("{%s}: errno %v", fields, errno)
		}
		family, v6only := sockInfo(t, fd)
		syscall.Close(fd)
		if family != 6 || v6only != flags {
			t.Fatalf("{%s}: IPv%d socket with IPV6_V6ONLY %d; want IPv6 with %d", fields, family, v6only, flags)
		}
	}
}

func TestNodeWarnUnasked(t *testing.T) {
	nc, ls := newTestCluster(t, "127.0.0.1:0", "127.0.0.1:0")
	var log syncBuffer
	nc.log = bufferLogger(&log)
	f, _ := newFakeWorker(t, nc, 0)
	if fd, errno := queryReply(t, f, 1, `"address":null,"port":`+strconv.Itoa(portOf(t, ls[0].FD))+`,"addressType":4`); fd < 0 {
		t.Fatalf("errno %v", errno)
	} else {
		syscall.Close(fd)
	}
	nc.do(nc.warnUnasked)
	nc.do(nc.warnUnasked)
	out := log.String()
	if strings.Count(out, "none has asked for this listener") != 1 || !strings.Contains(out, ls[1].Bound()) || strings.Contains(out, ls[0].Bound()) {
		t.Fatalf("want one warning, of %s only:\n%s", ls[1].Bound(), out)
	}
}
