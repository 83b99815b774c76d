//go:build linux || darwin

// This file holds how a Node worker's listen() is matched to prefork's own
// listeners (exact address, a wildcard one that accepts on it, then any on
// the port; the socket family for UDP), and how a socket is bound for it when
// none matches, as Node's own primary binds it. queryServer, which uses
// them, is in query.go.

package nodecluster

import (
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/prefork/prefork/internal/sock"
)

// ask is a worker's listen() or bind() on a TCP or UDP port, as matching sees it.
type ask struct {
	network string // "tcp" or "udp"
	host    string // the IP the worker sent; "" for TCP listen(port) with no host
	port    int    // 0: any port, which none of prefork's listeners answers
	family  int    // udp: the dgram socket's family (4 or 6), which the socket given must have; tcp: 0
}

// offer is one of prefork's own TCP or UDP listeners, as matching sees it.
type offer struct {
	network string
	ip      net.IP // the address it is bound to
	port    int
	family  int  // the socket's address family: 4 or 6
	dual    bool // an IPv6 wildcard socket that takes IPv4 too (IPV6_V6ONLY off)
}

// How well an offer serves an ask; the lowest wins, the first listed on a tie
// (the operator's order).
const (
	rankExact  = iota // the very address asked for
	rankCovers        // a wildcard listener that takes the address asked for
	rankAny           // the ask is a wildcard or has no host: any address prefork listens on
	rankNone
)

// matchListener picks the offer that serves ask: an exact address first,
// then a wildcard one that takes it; an app's wildcard (0.0.0.0, ::) or no
// host takes any address prefork listens on for that port. A worker's UDP
// socket gets only a socket of its own family: a udp4 socket given an IPv6
// one fails every send() (EINVAL). A TCP server takes either family. It
// returns the offer's index (-1 for none) and whether the address is the one
// asked for.
func matchListener(ask ask, offers []offer) (int, bool) {
	best, bestRank := -1, rankNone
	for i, o := range offers {
		if r := rankOffer(ask, o); r < bestRank {
			best, bestRank = i, r
		}
	}
	return best, bestRank == rankExact
}

func rankOffer(ask ask, o offer) int {
	if ask.port == 0 || o.network != ask.network || o.port != ask.port {
		return rankNone
	}
	if ask.family != 0 && o.family != ask.family {
		return rankNone
	}
	var ip net.IP
	if ask.host != "" {
		h, _, _ := strings.Cut(ask.host, "%") // fe80::1%eth0: the zone is the interface's, not the address's
		if ip = net.ParseIP(h); ip == nil {
			return rankNone
		}
	}
	switch {
	case ip != nil && ip.Equal(o.ip):
		return rankExact
	case o.ip.IsUnspecified() && takes(o, ip):
		return rankCovers
	case ip == nil || ip.IsUnspecified():
		return rankAny
	}
	return rankNone
}

// takes reports whether wildcard listener o accepts on ip (nil: no host).
func takes(o offer, ip net.IP) bool {
	if ip == nil || ip.Equal(net.IPv6unspecified) {
		return true // no host or '::' (dual-stack in Node): any wildcard serves it best
	}
	if ip.To4() != nil { // 1.2.3.4, or ::ffff:1.2.3.4, which is IPv4 on the wire
		return o.family == 4 || o.dual
	}
	return o.family == 6
}

// offerOf is what matching needs of a TCP or UDP listener, from its socket.
func offerOf(l *sock.Listener) (offer, bool) {
	sa, err := syscall.Getsockname(l.FD)
	if err != nil {
		return offer{}, false
	}
	o := offer{network: l.Spec.Network}
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		o.ip, o.port, o.family = net.IP(sa.Addr[:]), sa.Port, 4
	case *syscall.SockaddrInet6:
		o.ip, o.port, o.family = net.IP(sa.Addr[:]), sa.Port, 6
		if o.ip.IsUnspecified() {
			v, err := syscall.GetsockoptInt(l.FD, syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY)
			o.dual = err == nil && v == 0
		}
	default:
		return offer{}, false
	}
	return o, true
}

// askFamily is the address family a worker's dgram socket has (4 or 6), from
// the addressType it sent; 0 for TCP, whose servers take either.
func askFamily(at string) int {
	switch at {
	case `"udp4"`:
		return 4
	case `"udp6"`:
		return 6
	}
	return 0
}

func wildcardOf(family int) string {
	if family == 6 {
		return "::"
	}
	return "0.0.0.0"
}

// bindFor binds a socket for a worker's listen() that none of prefork's own
// serves.
func (nc *Cluster) bindFor(network, addr string, port int, at string, m *msg) (*sock.Listener, error) {
	backlog := nc.backlog
	if m.Backlog.n > 0 && backlog <= 0 {
		backlog = m.Backlog.n
	}
	if network == "unix" {
		spec := sock.Spec{Network: network, Addr: addr, Text: addr}
		spec.Name = spec.DefaultName()
		ls, err := sock.Bind([]sock.Spec{spec}, backlog, false)
		if err != nil {
			return nil, err
		}
		if m.ReadableAll || m.WritableAll {
			mode := os.FileMode(0o600)
			if m.ReadableAll {
				mode |= 0o044
			}
			if m.WritableAll {
				mode |= 0o022
			}
			os.Chmod(addr, mode)
		}
		return ls[0], nil
	}
	b, err := nodeBindFor(network, addr, port, at, m.Flags.n)
	if err != nil {
		return nil, err
	}
	return b.open(backlog, nc.reuseport)
}

// nodeBind is a TCP or UDP socket to bind for a worker, as Node's own primary
// binds it (net.js createServerHandle and dgram.js _createSocketHandle, on
// libuv's uv_tcp_bind and uv_udp_bind). Not as prefork binds -l: there an
// address makes an IPv6 socket IPv6-only (nginx's rule), where Node binds
// listen(port, '::') dual-stack.
type nodeBind struct {
	spec sock.Spec
	sa   syscall.Sockaddr
	// v6only is IPV6_V6ONLY for an IPv6 socket: 1 only when the app asked for
	// ipv6Only (flags & 1); otherwise 0 for TCP, so that [::] takes IPv4 too,
	// and -1 for UDP (the system default, dual-stack on Linux), as libuv does.
	v6only int
	// anyHost: TCP listen(port) with no host, [::], or 0.0.0.0 on a machine without IPv6.
	anyHost bool
}

// nodeBindFor is how Node's primary binds addr:port for a worker whose
// queryServer had addressType at and flags.
func nodeBindFor(network, addr string, port int, at string, flags int) (nodeBind, error) {
	b := nodeBind{spec: sock.Spec{Network: network}}
	ipv6Only := flags&1 != 0
	switch {
	case ipv6Only:
		b.v6only = 1
	case network == "tcp":
		b.v6only = 0
	default:
		b.v6only = -1
	}
	if addr == "" {
		b.sa, b.anyHost = &syscall.SockaddrInet6{Port: port}, true
		b.spec.Addr = ":" + strconv.Itoa(port)
		if ipv6Only {
			b.spec.Addr = "[::]:" + strconv.Itoa(port)
		}
	} else {
		sa, err := sock.Resolve(addr, port)
		if err != nil {
			return b, err
		}
		if sa4, ok := sa.(*syscall.SockaddrInet4); ok && (at == "6" || at == `"udp6"`) {
			// ::ffff:1.2.3.4 from an IPv6 handle: an IPv6 socket, as Node's, so
			// that a udp6 socket can send() to IPv6 peers.
			sa6 := &syscall.SockaddrInet6{Port: port}
			copy(sa6.Addr[:], net.IPv4(sa4.Addr[0], sa4.Addr[1], sa4.Addr[2], sa4.Addr[3]).To16())
			sa = sa6
		}
		b.sa = sa
		b.spec.Addr = net.JoinHostPort(addr, strconv.Itoa(port))
	}
	b.spec.Text = b.spec.Addr
	b.spec.Name = b.spec.DefaultName()
	return b, nil
}

// open binds b, with SO_REUSEPORT in reuseport mode, and listens for TCP
// (backlog <= 0: the system maximum).
func (b nodeBind) open(backlog int, reuseport bool) (*sock.Listener, error) {
	return sock.BindInet(b.spec, b.sa, b.v6only, b.anyHost, reuseport, backlog)
}
