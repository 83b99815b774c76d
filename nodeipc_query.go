//go:build linux || darwin

// This file holds the primary's answer to queryServer and the listener
// registry behind it: matching a worker's listen() to prefork's listeners by
// fd, port and address, binding on the first request and sharing the socket,
// and the socket each worker gets in shared, reuseport and rr mode.
package main

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"strconv"
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
	static := func(i int) *nodeListener {
		if i >= 0 && i < len(nc.ls) && nc.ls[i].static {
			return nc.ls[i]
		}
		return nil
	}
	// listen({fd: N}): prefork's listener at fd N.
	if m.Fd.num && m.Fd.n >= 0 {
		if nl := static(m.Fd.n - 3); nl != nil {
			return nl, 0
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
	// One of prefork's own: same network and port (path); an exact address
	// first, then a wildcard one; listen(port) with no host takes any address
	// prefork listens on (the operator chose it).
	var wild, other *nodeListener
	for _, nl := range nc.ls {
		if !nl.static || nl.l.spec.network != network {
			continue
		}
		if network == "unix" {
			if nl.l.spec.addr == addr {
				return nl, 0
			}
			continue
		}
		host, p, ok := boundHostPort(nl.l)
		if !ok || port == 0 || p != port {
			continue
		}
		if addr != "" && sameIP(host, addr) {
			return nl, 0
		}
		if host == "::" || host == "0.0.0.0" {
			wild = nl
		} else if addr == "" && other == nil {
			other = nl
		}
	}
	if wild != nil {
		return wild, 0
	}
	if other != nil {
		return other, 0
	}
	// Bound on an earlier request: shared by every worker (port 0 per index, as Node does).
	q := network + "|" + addr + "|" + strconv.Itoa(port) + "|" + at + "|" + strconv.Itoa(m.Flags.n)
	if port == 0 && network != "unix" {
		q += "|" + strconv.Itoa(m.Index.n)
	}
	for _, nl := range nc.ls {
		if nl.query == q {
			return nl, 0
		}
	}
	spec := listenSpec{network: network}
	switch {
	case network == "unix":
		spec.addr = addr
	case addr == "" && network == "tcp":
		spec.addr = ":" + strconv.Itoa(port)
	case addr == "":
		spec.addr = "0.0.0.0:" + strconv.Itoa(port)
		if at == `"udp6"` {
			spec.addr = "[::]:" + strconv.Itoa(port)
		}
	default:
		spec.addr = net.JoinHostPort(addr, strconv.Itoa(port))
	}
	spec.text = spec.addr
	spec.name = defaultName(spec)
	backlog := nc.backlog
	if m.Backlog.n > 0 && backlog <= 0 {
		backlog = m.Backlog.n
	}
	reuseport := nc.mode == "reuseport" && network != "unix"
	ls, err := openAll([]listenSpec{spec}, backlog, reuseport)
	if err != nil {
		var errno syscall.Errno
		if !errors.As(err, &errno) {
			errno = syscall.EINVAL
		}
		nc.log.Warn("node: cannot bind what a worker asked for", "addr", spec.addr, "err", err)
		return nil, errno
	}
	l := ls[0]
	if network == "unix" && (m.ReadableAll || m.WritableAll) {
		mode := os.FileMode(0o600)
		if m.ReadableAll {
			mode |= 0o044
		}
		if m.WritableAll {
			mode |= 0o022
		}
		os.Chmod(addr, mode)
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

// boundHostPort is the host and port a TCP or UDP listener is really bound to.
func boundHostPort(l *listener) (string, int, bool) {
	host, p, err := net.SplitHostPort(l.bound)
	if err != nil {
		return "", 0, false
	}
	port, err := strconv.Atoi(p)
	return host, port, err == nil
}

func sameIP(a, b string) bool {
	x, y := net.ParseIP(a), net.ParseIP(b)
	return x != nil && y != nil && x.Equal(y)
}
