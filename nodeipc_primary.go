//go:build linux || darwin

// This file implements what Node's cluster primary does for a worker, on top of
// the codec in nodeipc.go: it answers queryServer from prefork's listeners (or
// binds on the first request and shares the socket), in shared, reuseport and
// rr mode; hands rr connections over as newconn; acks exitedAfterDisconnect;
// sends disconnect for a graceful stop; and turns listening and the seeds'
// {act: 'suicide'} into READY=1 and STOPPING=1 for the supervisor.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
)

// nodeRR is what the Node channel needs of the rr dispatcher.
type nodeRR interface {
	// addListener makes the dispatcher accept on one more listener (a socket
	// bound on a worker's request) and returns its index.
	addListener(fd int) (uint32, error)
	// ack reports a worker's answer to a newconn: accepted, or refused (the
	// connection goes to another worker).
	ack(id int, seq uint32, accepted bool)
	// kick makes the dispatcher look again for a worker that can take what it holds.
	kick()
}

// dispatcherNodeRR is the rr dispatcher as the Node channel uses it.
type dispatcherNodeRR struct{ d *dispatcher }

func (r dispatcherNodeRR) addListener(fd int) (uint32, error) { return r.d.addListener(fd) }
func (r dispatcherNodeRR) kick()                              { r.d.kick() }

func (r dispatcherNodeRR) ack(id int, seq uint32, accepted bool) {
	if !accepted {
		r.d.refused(id, seq)
	} else if err := r.d.acked(id, seq); err != nil {
		r.d.log.Debug("node: ack from a worker", "pid", id, "err", err)
	}
}

// nodeCluster is the state every Node worker's channel shares: prefork's
// listeners and the sockets bound on request, in one place, guarded by mu.
type nodeCluster struct {
	log        *slog.Logger
	mode       string
	backlog    int
	sendServer []byte // --node-send-server as a JSON string; nil when not given
	rr         nodeRR // rr mode only
	// connsNonblock: the rr dispatcher accepts connections non-blocking already.
	connsNonblock bool

	mu sync.Mutex
	ls []*nodeListener // index = the listener's index in the dispatcher
}

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

// newNodeCluster wraps prefork's listeners (static: the order of listeners);
// d is the rr dispatcher, nil in other modes.
func newNodeCluster(log *slog.Logger, c *config, listeners []*listener, d *dispatcher) *nodeCluster {
	nc := &nodeCluster{log: log, mode: c.mode, backlog: c.backlog}
	if c.nodeSendServer != "" {
		nc.sendServer, _ = json.Marshal(c.nodeSendServer)
	}
	if d != nil {
		nc.rr = dispatcherNodeRR{d}
		d.setNonblockConns()
		nc.connsNonblock = true
	}
	for i, l := range listeners {
		nc.ls = append(nc.ls, &nodeListener{index: uint32(i), l: l, static: true, rr: d != nil && l.spec.network != "udp"})
	}
	return nc
}

// nodeClusterOn reports whether prefork is the Node cluster primary of its
// workers: --node-cluster on, or auto and the command's executable is named
// node or nodejs (path is the command resolved, which may be a link to it).
func nodeClusterOn(c *config, path string) bool {
	switch c.nodeCluster {
	case "on":
		return true
	case "off":
		return false
	}
	if c.demo || len(c.command) == 0 {
		return false
	}
	isNode := func(p string) bool {
		b := filepath.Base(p)
		return b == "node" || b == "nodejs"
	}
	return isNode(c.command[0]) || isNode(path)
}

// close closes the sockets bound on request (prefork's own are closed by the supervisor).
func (nc *nodeCluster) close() {
	nc.mu.Lock()
	defer nc.mu.Unlock()
	for _, nl := range nc.ls {
		if nl.static {
			continue
		}
		for slot, fd := range nl.socks {
			if slot != 0 {
				syscall.Close(fd)
			}
		}
		closeListeners([]*listener{nl.l})
	}
}

// nodeWorker is the primary's side of one worker.
type nodeWorker struct {
	nc    *nodeCluster
	conn  *nodeConn
	pid   int
	slot  int
	socks []int // reuseport: duplicates of the slot's sockets, one per static listener

	// Callbacks into the supervisor, called on the reader goroutine.
	notify func(msg map[string]string) // READY=1, STOPPING=1
	ended  func(err error)             // the channel is closed

	mu             sync.Mutex
	online         bool
	listening      bool
	disconnectSent bool
	selfDisconnect bool              // the worker began its own disconnect (exitedAfterDisconnect)
	keys           map[uint32][]byte // rr: listener → the JSON key of the worker's server on it
	servers        map[string]uint32 // the worker's live servers: key → listener
	sentServers    []uint32          // --node-send-server: listeners sent, not yet listened on
}

// newNodeWorker takes prefork's end of a new worker's channel and starts reading it.
func (nc *nodeCluster) newNodeWorker(pid, slot, fd int, socks []int, notify func(map[string]string), ended func(error)) (*nodeWorker, error) {
	w := &nodeWorker{nc: nc, pid: pid, slot: slot, notify: notify, ended: ended,
		keys: map[uint32][]byte{}, servers: map[string]uint32{}}
	for _, s := range socks {
		d, err := dupCloexec(s)
		if err != nil {
			closeFds(w.socks)
			syscall.Close(fd)
			return nil, err
		}
		w.socks = append(w.socks, d)
	}
	c, err := newNodeConn(fd, fmt.Sprintf("prefork-node-worker-%d", pid))
	if err != nil {
		closeFds(w.socks)
		return nil, err
	}
	w.conn = c
	c.handle = w.message
	c.refused = func(seq uint32) {
		if nc.rr != nil {
			nc.rr.ack(pid, seq, false)
		}
	}
	c.closed = func(err error) {
		w.mu.Lock()
		closeFds(w.socks) // only the reader sends them, and it is done
		w.socks = nil
		w.mu.Unlock()
		if w.ended != nil {
			w.ended(err)
		}
	}
	c.start()
	return w, nil
}

// detach closes the channel once the worker is gone; its reader ends on its own.
func (w *nodeWorker) detach() { w.conn.close() }

// stop begins a graceful stop: disconnect, so that Node closes its servers and
// lets in-flight requests finish. It reports whether the caller should wait for
// the channel to close before sending the stop signal: false when the worker
// never spoke the cluster protocol (it would ignore disconnect), or its
// channel is already closed.
func (w *nodeWorker) stop() (wait bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.online {
		return false
	}
	if w.selfDisconnect || w.disconnectSent {
		return true // never a second disconnect (the worker would exit 1)
	}
	w.disconnectSent = true
	line := nodeLine(map[string]any{"cmd": "NODE_CLUSTER", "act": "disconnect", "seq": w.conn.nextSeq()})
	return w.conn.send(line, -1) == nil
}

// sendConn is the rr sender: connection conn under seq, from listener index.
// It is errNodeBusy when the worker has no server on that listener (yet).
func (w *nodeWorker) sendConn(seq, index uint32, conn int) error {
	w.mu.Lock()
	key := w.keys[index]
	w.mu.Unlock()
	if key == nil {
		return syscall.EAGAIN // no server on that listener (yet): another worker's turn
	}
	switch err := w.conn.sendNewconn(key, seq, conn, !w.nc.connsNonblock); err {
	case errNodeBusy:
		return syscall.EAGAIN
	case errNodeClosed:
		return syscall.EPIPE
	default:
		return err
	}
}

// canTake reports whether the worker has a server on listener index.
func (w *nodeWorker) canTake(index uint32) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.keys[index] != nil
}

// message handles one message from the worker (reader goroutine). fd is a
// descriptor the worker sent with it, or -1.
func (w *nodeWorker) message(m *nodeMsg, fd int) {
	if fd >= 0 {
		syscall.Close(fd) // prefork has no use for a handle a worker sends
	}
	if !m.internal() {
		if m.Act == "suicide" {
			w.nc.log.Info("node worker sent {act: 'suicide'}", "pid", w.pid)
			w.notify(map[string]string{"STOPPING": "1"})
		}
		return
	}
	if m.Cmd != "NODE_CLUSTER" {
		return // NODE_SOCKET_NOTIFY_CLOSE and others
	}
	if m.Ack.raw != "" && m.Act == "" {
		// A reply to a newconn (the only request prefork makes that gets one).
		if !m.Accepted {
			w.nc.log.Debug("node worker refused a connection", "pid", w.pid, "seq", m.Ack.raw)
		}
		if w.nc.rr != nil && m.Ack.num && m.Ack.n >= 0 && m.Ack.n <= 1<<32-1 {
			w.nc.rr.ack(w.pid, uint32(m.Ack.n), m.Accepted)
		}
		return
	}
	switch m.Act {
	case "online":
		w.mu.Lock()
		w.online = true
		w.mu.Unlock()
		w.sendServers()
	case "queryServer":
		w.queryServer(m)
	case "listening":
		w.mu.Lock()
		first := !w.listening
		w.listening = true
		w.mu.Unlock()
		if first {
			w.notify(map[string]string{"READY": "1"})
		}
		if w.nc.rr != nil {
			w.nc.rr.kick()
		}
	case "close":
		w.mu.Lock()
		if i, ok := w.servers[m.Key]; ok {
			delete(w.servers, m.Key)
			if string(w.keys[i]) == string(jsonString(m.Key)) {
				delete(w.keys, i)
				for k, j := range w.servers { // another server of the worker on that listener
					if j == i {
						w.keys[i] = jsonString(k)
						break
					}
				}
			}
		}
		w.mu.Unlock()
	case "exitedAfterDisconnect":
		w.mu.Lock()
		w.selfDisconnect = true
		w.mu.Unlock()
		if m.Seq.raw != "" {
			w.conn.send(nodeLine(map[string]any{"cmd": "NODE_CLUSTER", "ack": json.RawMessage(m.Seq.raw), "seq": w.conn.nextSeq()}), -1)
		}
		w.notify(map[string]string{"STOPPING": "1"})
	}
}

// sendServers sends every listener as process.send(MSG, server) would
// (--node-send-server), once the worker is online.
func (w *nodeWorker) sendServers() {
	if w.nc.sendServer == nil {
		return
	}
	w.nc.mu.Lock()
	ls := append([]*nodeListener(nil), w.nc.ls...)
	w.nc.mu.Unlock()
	for _, nl := range ls {
		if !nl.static {
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
		w.mu.Lock()
		w.sentServers = append(w.sentServers, nl.index)
		w.mu.Unlock()
		if err := setNonblockFd(fd); err == nil {
			w.conn.send(line, fd)
		}
	}
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
		setNonblockFd(l.fd)
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
