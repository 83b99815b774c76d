//go:build linux || darwin

// This file holds the primary's answer to queryServer and the listener
// registry behind it: matching a worker's listen() to prefork's listeners by
// fd, port, address and family, binding on the first request (as Node's
// primary binds) and sharing the socket, and the socket each worker gets in
// shared, reuseport and rr mode.
package main

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// nodeListener is a listener a Node worker may get.
type nodeListener struct {
	index  uint32
	l      *listener
	static bool            // one of prefork's own (-p, -l, adopted): fd 3+index in workers
	query  string          // for one bound on request: what it was bound for
	data   json.RawMessage // the first worker's server data (TLS ticket keys), echoed to all
	socks  map[int]int     // reuseport, bound on request: slot → that slot's socket
	rr     bool            // added to the dispatcher
	asked  bool            // static: a worker has asked for it
	told   bool            // static: the info line on serving another address is logged
	warned bool            // static: warnUnasked has warned of it
}

// socketFor is the socket of nl that this worker gets in shared or reuseport
// mode, with the handle type that carries it; -1 if none.
func (w *nodeWorker) socketFor(nl *nodeListener) (int, string) {
	typ := "net.Native"
	if nl.l.spec.network == "udp" {
		typ = "dgram.Native"
	}
	if w.nc.mode == "reuseport" && nl.l.spec.network != "unix" {
		if nl.static {
			w.mu.Lock()
			defer w.mu.Unlock()
			if int(nl.index) < len(w.socks) {
				return w.socks[nl.index], typ
			}
			return -1, typ
		}
		w.nc.mu.Lock()
		defer w.nc.mu.Unlock()
		fd, ok := nl.socks[w.slot]
		if !ok {
			var err error
			if fd, err = nl.l.reuseportSocket(w.nc.backlog); err != nil {
				w.nc.log.Error("node: cannot open a reuseport socket", "addr", nl.l.bound, "err", err)
				return nl.l.fd, typ
			}
			nl.socks[w.slot] = fd
		}
		return fd, typ
	}
	return nl.l.fd, typ
}

// queryServer answers a worker's listen(): the listener it gets, in the mode's way.
func (w *nodeWorker) queryServer(m *nodeMsg) {
	key := nodeKey(m)
	nl, errno := w.nc.listenerFor(w, m)
	reply := map[string]any{"cmd": "NODE_CLUSTER", "key": key, "data": rawOrNull(m.Data)}
	if m.Seq.raw != "" {
		reply["ack"] = json.RawMessage(m.Seq.raw) // echoed exactly, or the worker ignores the reply
	}
	if errno != 0 {
		reply["errno"] = -int(errno)
		reply["seq"] = w.conn.nextSeq()
		w.conn.send(nodeLine(reply), -1)
		return
	}
	w.nc.mu.Lock()
	if nl.data == nil && len(m.Data) > 0 && string(m.Data) != "null" {
		nl.data = append(json.RawMessage(nil), m.Data...)
	}
	if nl.data != nil {
		reply["data"] = nl.data
	}
	rr := nl.rr
	w.nc.mu.Unlock()
	w.mu.Lock()
	w.servers[key] = nl.index
	if w.keys[nl.index] == nil {
		w.keys[nl.index] = jsonString(key)
	}
	w.mu.Unlock()
	if rr {
		reply["errno"] = nil
		if nl.l.spec.network != "unix" {
			if sn := sockname(nl.l.fd); sn != nil {
				reply["sockname"] = sn
			}
		}
		reply["seq"] = w.conn.nextSeq()
		w.conn.send(nodeLine(reply), -1)
		return
	}
	fd, typ := w.socketFor(nl)
	if err := setNonblockFd(fd); err != nil {
		reply["errno"] = -int(syscall.EINVAL)
		reply["seq"] = w.conn.nextSeq()
		w.conn.send(nodeLine(reply), -1)
		return
	}
	reply["errno"] = 0
	reply["seq"] = w.conn.nextSeq()
	inner := nodeLine(reply)
	line := nodeLine(map[string]any{"cmd": "NODE_HANDLE", "type": typ, "msg": json.RawMessage(inner[:len(inner)-1])})
	w.conn.send(line, fd)
}

// listenerFor finds or binds the listener for a queryServer, or an errno.
func (nc *nodeCluster) listenerFor(w *nodeWorker, m *nodeMsg) (*nodeListener, syscall.Errno) {
	at := string(m.AddressType)
	nc.mu.Lock()
	defer nc.mu.Unlock()
	// listen({fd: N}): prefork's listener at fd N.
	if m.Fd.num && m.Fd.n >= 0 {
		if i := m.Fd.n - 3; i >= 0 && i < len(nc.ls) && nc.ls[i].static {
			nc.ls[i].asked = true
			return nc.ls[i], 0
		}
		return nil, syscall.EBADF
	}
	// server.listen(handle) in a worker, for a handle --node-send-server sent.
	if m.Address == nil && at == "-1" {
		w.mu.Lock()
		defer w.mu.Unlock()
		if len(w.sentServers) > 0 {
			i := w.sentServers[0]
			w.sentServers = w.sentServers[1:]
			nc.ls[i].asked = true
			return nc.ls[i], 0
		}
		return nil, syscall.EINVAL
	}
	network := "tcp"
	switch at {
	case `"udp4"`, `"udp6"`:
		network = "udp"
	case "-1":
		network = "unix"
	}
	port := 0
	if m.Port.num && m.Port.n > 0 {
		port = m.Port.n
	}
	addr := ""
	if m.Address != nil {
		addr = *m.Address
	}
	if addr == "" && network == "udp" {
		addr = wildcardOf(askFamily(at)) // dgram's bind(port) default; Node always sends it
	}
	if nl := nc.ownListener(network, addr, port, at); nl != nil {
		nl.asked = true
		return nl, 0
	}
	// Bound on an earlier request: shared by every worker (port 0 per index, as Node does).
	q := network + "|" + addr + "|" + strconv.Itoa(port) + "|" + at + "|" + strconv.Itoa(m.Flags.n)
	if port == 0 && network != "unix" {
		q += "|" + strconv.Itoa(m.Index.n)
	}
	for _, nl := range nc.ls {
		if nl != nil && nl.query == q {
			return nl, 0
		}
	}
	l, err := nc.bindFor(network, addr, port, at, m)
	if err != nil {
		return nil, nc.bindFailed(network, addr, port, at, err)
	}
	nl := &nodeListener{index: uint32(len(nc.ls)), l: l, query: q, socks: map[int]int{0: l.fd}}
	if nc.rr != nil && network != "udp" {
		idx, err := nc.rr.addListener(l.fd)
		if err != nil {
			closeListeners([]*listener{l})
			nc.log.Error("node: rr cannot accept on a socket bound on request", "addr", l.bound, "err", err)
			return nil, syscall.EINVAL
		}
		nl.index, nl.rr = idx, true
		for len(nc.ls) < int(idx) {
			nc.ls = append(nc.ls, nil) // cannot happen: the dispatcher numbers listeners as nc does
		}
	}
	nc.log.Info("listening (bound for a node worker)", "addr", l.bound)
	nc.ls = append(nc.ls, nl)
	return nl, 0
}

// ownListener is the one of prefork's own listeners (-p, -l, adopted) that
// serves a worker's listen(), or nil. The operator chose prefork's addresses,
// so they win over the app's (see matchNodeListener). Binding the app's
// address beside them would fail (EADDRINUSE on a wildcard) or leave
// prefork's socket unserved. nc.mu is held.
func (nc *nodeCluster) ownListener(network, addr string, port int, at string) *nodeListener {
	var cands []*nodeListener
	var offers []nodeOffer
	for _, nl := range nc.ls {
		if nl == nil || !nl.static || nl.l.spec.network != network {
			continue
		}
		if network == "unix" {
			if nl.l.spec.addr == addr {
				return nl
			}
			continue
		}
		if o, ok := offerOf(nl.l); ok {
			cands, offers = append(cands, nl), append(offers, o)
		}
	}
	i, exact := matchNodeListener(nodeAsk{network: network, host: addr, port: port, family: askFamily(at)}, offers)
	if i < 0 {
		return nil
	}
	nl := cands[i]
	if addr != "" && !exact && !nl.told {
		// The app named an address and gets another: say so once, for whoever
		// wonders why server.address() is not what the app asked for.
		nl.told = true
		nc.log.Info("node: a worker's listen() is served by prefork's listener on that port",
			"network", network, "asked", net.JoinHostPort(addr, strconv.Itoa(port)), "listener", nl.l.bound)
	}
	return nl
}

// warnUnasked warns, once per listener, of each of prefork's own listeners no
// worker has asked for yet: its connections or datagrams wait for a server
// that may never come (the app listens on another port, or another address).
// Meant to be called when the first worker says listening: by then that
// worker has asked for every server it starts at once.
func (nc *nodeCluster) warnUnasked() {
	nc.mu.Lock()
	defer nc.mu.Unlock()
	for _, nl := range nc.ls {
		if nl == nil || !nl.static || nl.asked || nl.warned {
			continue
		}
		nl.warned = true
		nc.log.Warn("node: a worker is listening, but none has asked for this listener: nothing serves it (does the app listen on another port or address?)",
			"network", nl.l.spec.network, "addr", nl.l.bound)
	}
}

// bindFailed logs why a worker's request could not be bound and returns the
// errno the worker gets (its listen() fails with it, as under Node's primary).
func (nc *nodeCluster) bindFailed(network, addr string, port int, at string, err error) syscall.Errno {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		errno = syscall.EINVAL
	}
	asked := addr
	if network != "unix" {
		asked = net.JoinHostPort(addr, strconv.Itoa(port))
	}
	args := []any{"network", network, "addr", asked, "err", err}
	if hint := nc.familyHint(network, port, at); hint != "" && errno == syscall.EADDRINUSE {
		args = append(args, "hint", hint)
	}
	nc.log.Warn("node: cannot bind what a worker asked for", args...)
	return errno
}

// familyHint explains an EADDRINUSE on a UDP port that one of prefork's own
// listeners holds with the other address family, which a worker's dgram
// socket cannot use; "" otherwise. nc.mu is held.
func (nc *nodeCluster) familyHint(network string, port int, at string) string {
	want := askFamily(at)
	if network != "udp" || want == 0 {
		return ""
	}
	for _, nl := range nc.ls {
		if nl == nil || !nl.static || nl.l.spec.network != "udp" {
			continue
		}
		if o, ok := offerOf(nl.l); ok && o.port == port && o.family != want {
			return "prefork's listener udp " + nl.l.bound + " holds the port with an IPv" + strconv.Itoa(o.family) +
				" socket, which a udp" + strconv.Itoa(want) + " socket cannot use: give -l udp:" +
				net.JoinHostPort(wildcardOf(want), strconv.Itoa(port)) + " or createSocket('udp" + strconv.Itoa(o.family) + "')"
		}
	}
	return ""
}

// nodeAsk is a worker's listen() or bind() on a TCP or UDP port, as matching sees it.
type nodeAsk struct {
	network string // "tcp" or "udp"
	host    string // the IP the worker sent; "" for TCP listen(port) with no host
	port    int    // 0: any port, which none of prefork's listeners answers
	family  int    // udp: the dgram socket's family (4 or 6), which the socket given must have; tcp: 0
}

// nodeOffer is one of prefork's own TCP or UDP listeners, as matching sees it.
type nodeOffer struct {
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

// matchNodeListener picks the offer that serves ask: an exact address first,
// then a wildcard one that takes it; an app's wildcard (0.0.0.0, ::) or no
// host takes any address prefork listens on for that port. A worker's UDP
// socket gets only a socket of its own family: a udp4 socket given an IPv6
// one fails every send() (EINVAL). A TCP server takes either family. It
// returns the offer's index (-1 for none) and whether the address is the one
// asked for.
func matchNodeListener(ask nodeAsk, offers []nodeOffer) (int, bool) {
	best, bestRank := -1, rankNone
	for i, o := range offers {
		if r := rankOffer(ask, o); r < bestRank {
			best, bestRank = i, r
		}
	}
	return best, bestRank == rankExact
}

func rankOffer(ask nodeAsk, o nodeOffer) int {
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
func takes(o nodeOffer, ip net.IP) bool {
	if ip == nil || ip.Equal(net.IPv6unspecified) {
		return true // no host or '::' (dual-stack in Node): any wildcard serves it best
	}
	if ip.To4() != nil { // 1.2.3.4, or ::ffff:1.2.3.4, which is IPv4 on the wire
		return o.family == 4 || o.dual
	}
	return o.family == 6
}

// offerOf is what matching needs of a TCP or UDP listener, from its socket.
func offerOf(l *listener) (nodeOffer, bool) {
	sa, err := syscall.Getsockname(l.fd)
	if err != nil {
		return nodeOffer{}, false
	}
	o := nodeOffer{network: l.spec.network}
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		o.ip, o.port, o.family = net.IP(sa.Addr[:]), sa.Port, 4
	case *syscall.SockaddrInet6:
		o.ip, o.port, o.family = net.IP(sa.Addr[:]), sa.Port, 6
		if o.ip.IsUnspecified() {
			v, err := syscall.GetsockoptInt(l.fd, syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY)
			o.dual = err == nil && v == 0
		}
	default:
		return nodeOffer{}, false
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
// serves. nc.mu is held.
func (nc *nodeCluster) bindFor(network, addr string, port int, at string, m *nodeMsg) (*listener, error) {
	backlog := nc.backlog
	if m.Backlog.n > 0 && backlog <= 0 {
		backlog = m.Backlog.n
	}
	if network == "unix" {
		spec := listenSpec{network: network, addr: addr, text: addr}
		spec.name = defaultName(spec)
		ls, err := openAll([]listenSpec{spec}, backlog, false)
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
	return b.open(backlog, nc.mode == "reuseport")
}

// nodeBind is a TCP or UDP socket to bind for a worker, as Node's own primary
// binds it (net.js createServerHandle and dgram.js _createSocketHandle, on
// libuv's uv_tcp_bind and uv_udp_bind). Not as prefork binds -l: there an
// address makes an IPv6 socket IPv6-only (nginx's rule), where Node binds
// listen(port, '::') dual-stack.
type nodeBind struct {
	spec listenSpec
	sa   syscall.Sockaddr
	port int
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
	b := nodeBind{spec: listenSpec{network: network}, port: port}
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
		b.spec.addr = ":" + strconv.Itoa(port)
		if ipv6Only {
			b.spec.addr = "[::]:" + strconv.Itoa(port)
		}
	} else {
		sa, err := resolveSockaddr(addr, port)
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
		b.spec.addr = net.JoinHostPort(addr, strconv.Itoa(port))
	}
	b.spec.text = b.spec.addr
	b.spec.name = defaultName(b.spec)
	return b, nil
}

// open binds b, with SO_REUSEPORT in reuseport mode, and listens for TCP
// (backlog <= 0: the system maximum).
func (b nodeBind) open(backlog int, reuseport bool) (*listener, error) {
	if backlog <= 0 {
		backlog = somaxconn()
	}
	bind := func(reuseport bool, backlog int) (int, error) {
		fd, err := inetSocket(b.spec.network, b.sa, b.v6only, reuseport, backlog)
		if b.anyHost && (errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EADDRNOTAVAIL)) {
			fd, err = inetSocket(b.spec.network, &syscall.SockaddrInet4{Port: b.port}, -1, reuseport, backlog) // no IPv6 here
		}
		return fd, err
	}
	if reuseport && b.port != 0 {
		// As openInet: a socket with SO_REUSEPORT would join another
		// process's group on the port; a plain bind finds one first.
		probe, err := bind(false, bindOnly)
		if err != nil {
			return nil, err
		}
		syscall.Close(probe)
	}
	fd, err := bind(reuseport, backlog)
	if err != nil {
		return nil, err
	}
	return newListener(b.spec, fd)
}

// nodeKey is the key of a worker's server, as Node 20 renders it:
// address:port:addressType:fd:index, with absent values as "undefined". It is
// unique among one worker's live servers (index counts its listens on a tuple).
func nodeKey(m *nodeMsg) string {
	addr := "null"
	if m.Address != nil {
		addr = *m.Address
	}
	at := "undefined"
	if len(m.AddressType) > 0 {
		var s string
		if json.Unmarshal(m.AddressType, &s) == nil {
			at = s
		} else {
			at = string(m.AddressType)
		}
	}
	return addr + ":" + m.Port.js() + ":" + at + ":" + m.Fd.js() + ":" + m.Index.js()
}

func jsonString(s string) []byte {
	b, _ := json.Marshal(s)
	return b
}

func rawOrNull(r json.RawMessage) json.RawMessage {
	if len(r) == 0 {
		return json.RawMessage("null")
	}
	return r
}

// sockname is what server.address() returns in an rr worker.
func sockname(fd int) map[string]any {
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		return nil
	}
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		return map[string]any{"address": net.IP(sa.Addr[:]).String(), "family": "IPv4", "port": sa.Port}
	case *syscall.SockaddrInet6:
		return map[string]any{"address": net.IP(sa.Addr[:]).String(), "family": "IPv6", "port": sa.Port}
	}
	return nil
}
