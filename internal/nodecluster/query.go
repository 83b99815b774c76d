//go:build linux || darwin

// This file holds the primary's answer to queryServer and the listener
// registry behind it: a worker's listen() matched to prefork's listeners by
// fd, port, address and family, or bound on the first request (the rules of
// both are in listen.go) and shared, and the socket each worker gets
// in shared, reuseport and rr mode.

package nodecluster

import (
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"syscall"

	"github.com/prefork/prefork/internal/sock"
)

// listener is a listener a Node worker may get.
type listener struct {
	index  uint32
	l      *sock.Listener
	static bool            // one of prefork's own (-p, -l, adopted): fd 3+index in workers
	query  string          // for one bound on request: what it was bound for
	data   json.RawMessage // the first worker's server data (TLS ticket keys), echoed to all
	socks  map[int]int     // reuseport, bound on request: slot → that slot's socket
	rr     bool            // added to the dispatcher
	asked  bool            // static: a worker has asked for it
	told   bool            // static: the info line on serving another address is logged
	warned bool            // static: warnUnasked has warned of it
	by     *Worker         // bound on request: the worker whose request it was
	claims map[int]bool    // bound on request: slots whose worker left serving on it (registry.go)
}

// socketFor is the socket of nl that this worker gets in shared or reuseport
// mode, with the handle type that carries it; -1 if none.
func (w *Worker) socketFor(nl *listener) (int, string) {
	typ := "net.Native"
	if nl.l.Spec.Network == "udp" {
		typ = "dgram.Native"
	}
	if w.nc.reuseport && nl.l.Spec.Network != "unix" {
		if nl.static {
			if int(nl.index) < len(w.socks) {
				return w.socks[nl.index], typ
			}
			return -1, typ
		}
		fd, ok := nl.socks[w.slot]
		if !ok {
			if w.nc.held+1 > w.nc.maxSockets || !w.nc.headroom(1) {
				w.nc.log.Warn("node: no room for a slot's own reuseport socket; the worker shares the first", "addr", nl.l.Bound())
				return nl.l.FD, typ
			}
			var err error
			if fd, err = nl.l.ReuseportSocket(w.nc.backlog); err != nil {
				w.nc.log.Error("node: cannot open a reuseport socket", "addr", nl.l.Bound(), "err", err)
				return nl.l.FD, typ
			}
			nl.socks[w.slot] = fd
			w.nc.held++
		}
		return fd, typ
	}
	return nl.l.FD, typ
}

// queryServer answers a worker's listen(): the listener it gets, in the mode's way.
func (w *Worker) queryServer(m *msg) {
	key := serverKey(m)
	nl, errno := w.nc.listenerFor(w, m)
	reply := map[string]any{"cmd": "NODE_CLUSTER", "key": key, "data": rawOrNull(m.Data)}
	if m.Seq.raw != "" {
		reply["ack"] = json.RawMessage(m.Seq.raw) // echoed exactly, or the worker ignores the reply
	}
	if errno != 0 {
		reply["errno"] = -int(errno)
		reply["seq"] = w.nextSeq()
		w.conn.send(encodeLine(reply), -1)
		return
	}
	if nl.data == nil && len(m.Data) > 0 && string(m.Data) != "null" {
		nl.data = append(json.RawMessage(nil), m.Data...)
	}
	if nl.data != nil {
		reply["data"] = nl.data
	}
	w.servers[key] = nl.index
	if w.ownKeys[nl.index] == nil {
		w.ownKeys[nl.index] = jsonString(key)
		w.publishKeys()
	}
	if nl.rr {
		reply["errno"] = nil
		if nl.l.Spec.Network != "unix" {
			if sn := sockname(nl.l.FD); sn != nil {
				reply["sockname"] = sn
			}
		}
		reply["seq"] = w.nextSeq()
		w.conn.send(encodeLine(reply), -1)
		return
	}
	fd, typ := w.socketFor(nl)
	if err := setNonblockFd(fd); err != nil {
		reply["errno"] = -int(syscall.EINVAL)
		reply["seq"] = w.nextSeq()
		w.conn.send(encodeLine(reply), -1)
		return
	}
	reply["errno"] = 0
	reply["seq"] = w.nextSeq()
	inner := encodeLine(reply)
	line := encodeLine(map[string]any{"cmd": "NODE_HANDLE", "type": typ, "msg": json.RawMessage(inner[:len(inner)-1])})
	w.conn.send(line, fd)
}

// listenerFor finds or binds the listener for a queryServer, or an errno.
func (nc *Cluster) listenerFor(w *Worker, m *msg) (*listener, syscall.Errno) {
	at := string(m.AddressType)
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
	if errno := nc.canBind(w, nc.bindCost()); errno != 0 {
		return nil, errno
	}
	l, err := nc.bindFor(network, addr, port, at, m)
	if err != nil {
		return nil, nc.bindFailed(network, addr, port, at, err)
	}
	nl := &listener{index: uint32(len(nc.ls)), l: l, query: q, socks: map[int]int{0: l.FD}, by: w}
	if nc.rr != nil && network != "udp" {
		idx, err := nc.rr.AddListener(l.FD)
		if err != nil {
			sock.Close(l)
			nc.log.Error("node: rr cannot accept on a socket bound on request", "addr", l.Bound(), "err", err)
			return nil, syscall.EINVAL
		}
		nl.index, nl.rr = idx, true
		for len(nc.ls) < int(idx) {
			nc.ls = append(nc.ls, nil) // cannot happen: the dispatcher numbers listeners as nc does
		}
	}
	nc.log.Info("listening (bound for a node worker)", "addr", l.Bound())
	nc.ls = append(nc.ls, nl)
	nc.held += nc.bindCost()
	w.bound++
	return nl, 0
}

// ownListener is the one of prefork's own listeners (-p, -l, adopted) that
// serves a worker's listen(), or nil. The operator chose prefork's addresses,
// so they win over the app's (see matchListener). Binding the app's
// address beside them would fail (EADDRINUSE on a wildcard) or leave
// prefork's socket unserved.
func (nc *Cluster) ownListener(network, addr string, port int, at string) *listener {
	var cands []*listener
	var offers []offer
	for _, nl := range nc.ls {
		if nl == nil || !nl.static || nl.l.Spec.Network != network {
			continue
		}
		if network == "unix" {
			if nl.l.Spec.Addr == addr {
				return nl
			}
			continue
		}
		if o, ok := offerOf(nl.l); ok {
			cands, offers = append(cands, nl), append(offers, o)
		}
	}
	i, exact := matchListener(ask{network: network, host: addr, port: port, family: askFamily(at)}, offers)
	if i < 0 {
		return nil
	}
	nl := cands[i]
	if addr != "" && !exact && !nl.told {
		// The app named an address and gets another: say so once, for whoever
		// wonders why server.address() is not what the app asked for.
		nl.told = true
		nc.log.Info("node: a worker's listen() is served by prefork's listener on that port",
			"network", network, "asked", net.JoinHostPort(addr, strconv.Itoa(port)), "listener", nl.l.Bound())
	}
	return nl
}

// warnUnasked warns, once per listener, of each of prefork's own listeners no
// worker has asked for yet: its connections or datagrams wait for a server
// that may never come (the app listens on another port, or another address).
// Meant to be called when the first worker says listening: by then that
// worker has asked for every server it starts at once.
func (nc *Cluster) warnUnasked() {
	for _, nl := range nc.ls {
		if nl == nil || !nl.static || nl.asked || nl.warned {
			continue
		}
		nl.warned = true
		nc.log.Warn("node: a worker is listening, but none has asked for this listener: nothing serves it (does the app listen on another port or address?)",
			"network", nl.l.Spec.Network, "addr", nl.l.Bound())
	}
}

// bindFailed logs why a worker's request could not be bound and returns the
// errno the worker gets (its listen() fails with it, as under Node's primary).
func (nc *Cluster) bindFailed(network, addr string, port int, at string, err error) syscall.Errno {
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
// socket cannot use; "" otherwise.
func (nc *Cluster) familyHint(network string, port int, at string) string {
	want := askFamily(at)
	if network != "udp" || want == 0 {
		return ""
	}
	for _, nl := range nc.ls {
		if nl == nil || !nl.static || nl.l.Spec.Network != "udp" {
			continue
		}
		if o, ok := offerOf(nl.l); ok && o.port == port && o.family != want {
			return "prefork's listener udp " + nl.l.Bound() + " holds the port with an IPv" + strconv.Itoa(o.family) +
				" socket, which a udp" + strconv.Itoa(want) + " socket cannot use: give -l udp:" +
				net.JoinHostPort(wildcardOf(want), strconv.Itoa(port)) + " or createSocket('udp" + strconv.Itoa(o.family) + "')"
		}
	}
	return ""
}

// serverKey is the key of a worker's server, as Node 20 renders it:
// address:port:addressType:fd:index, with absent values as "undefined". It is
// unique among one worker's live servers (index counts its listens on a tuple).
func serverKey(m *msg) string {
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

// sendServers sends every listener as process.send(MSG, server) would
// (--node-send-server), once the worker is online.
func (w *Worker) sendServers() {
	if w.nc.sendServer == nil {
		return
	}
	for _, nl := range w.nc.ls {
		if nl == nil || !nl.static {
			continue
		}
		fd, typ := w.socketFor(nl)
		if fd < 0 {
			continue
		}
		if typ == "net.Native" {
			typ = "net.Server"
		} else {
			typ = "dgram.Socket"
		}
		line := []byte(`{"cmd":"NODE_HANDLE","type":"` + typ + `","msg":` + string(w.nc.sendServer) + "}\n")
		w.sentServers = append(w.sentServers, nl.index)
		if err := setNonblockFd(fd); err == nil {
			w.conn.send(line, fd)
		}
	}
}
