//go:build linux || darwin

// nodeipc_primary.go and nodeipc_query.go implement what Node's cluster primary
// does for a worker, on top of the codec in nodeipc.go: they answer queryServer
// from prefork's listeners (or bind on the first request and share the socket),
// in shared, reuseport and rr mode; hand rr connections over as newconn; ack
// exitedAfterDisconnect; send disconnect for a graceful stop; and turn listening
// and the seeds' {act: 'suicide'} into READY=1 and STOPPING=1 for the supervisor.
//
// This file holds the cluster state and the per-worker message handling;
// queryServer and the listener registry are in nodeipc_query.go.
//
// Ownership. The cluster and every worker's protocol state belong to one
// goroutine, the owner (prefork's supervisor loop): every method runs on it,
// except sendConn and canTake, which the rr dispatcher's thread calls and
// which read only the keys the owner publishes (an immutable map behind an
// atomic pointer) and the channel's write lock. Each worker's reader goroutine
// parses lines; it gives a newconn's answer to the dispatcher itself (two
// lines per rr connection) and hands everything else to the owner as a
// nodeEvent through post; timers post nodeEvents too. The owner passes each
// back to the worker's handle, which says what it means for the supervisor.
// The one lock left is the channel's write lock (nodeipc_conn.go).
package main

import (
	"encoding/json"
	"fmt"
	"github.com/prefork/prefork/internal/sock"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"
)

// nodeRR is what the Node channel needs of the rr dispatcher.
type nodeRR interface {
	// addListener makes the dispatcher accept on one more listener (a socket
	// bound on a worker's request) and returns its index.
	addListener(fd int) (uint32, error)
	// ack reports a worker's answer to a newconn: accepted, or refused (the
	// connection goes to another worker). Called on the reader goroutine.
	ack(id int, seq uint32, accepted bool)
	// kick makes the dispatcher look again for a worker that can take what it holds.
	kick()
	// shut says that a worker's channel is closed: what it did not ack goes to
	// another worker. Called on the reader goroutine.
	shut(id int)
}

// dispatcherNodeRR is the rr dispatcher as the Node channel uses it.
type dispatcherNodeRR struct{ d *dispatcher }

func (r dispatcherNodeRR) addListener(fd int) (uint32, error) { return r.d.addListener(fd) }
func (r dispatcherNodeRR) kick()                              { r.d.kick() }
func (r dispatcherNodeRR) shut(id int)                        { r.d.shut(id) }

func (r dispatcherNodeRR) ack(id int, seq uint32, accepted bool) {
	if !accepted {
		r.d.refused(id, seq)
	} else if err := r.d.acked(id, seq); err != nil {
		r.d.log.Debug("node: ack from a worker", "pid", id, "err", err)
	}
}

// nodeCluster is the state every Node worker's channel shares: prefork's
// listeners and the sockets bound on request, in one place (the owner's).
type nodeCluster struct {
	log        *slog.Logger
	mode       mode
	backlog    int
	sendServer []byte // --node-send-server as a JSON string; nil when not given
	rr         nodeRR // rr mode only
	// connsNonblock: the rr dispatcher accepts connections non-blocking already.
	connsNonblock bool
	// closingWait: how long a stop waits for a worker that closed all its
	// servers to end its channel itself before it gets disconnect (half --grace).
	closingWait time.Duration

	ls []*nodeListener // index = the listener's index in the dispatcher
}

// newNodeCluster wraps prefork's listeners (static: the order of listeners);
// d is the rr dispatcher, nil in other modes.
func newNodeCluster(log *slog.Logger, c *config, listeners []*sock.Listener, d *dispatcher) *nodeCluster {
	nc := &nodeCluster{log: log, mode: c.mode, backlog: c.backlog, closingWait: c.grace / 2}
	if c.nodeSendServer != "" {
		nc.sendServer, _ = json.Marshal(c.nodeSendServer)
	}
	if d != nil {
		nc.rr = dispatcherNodeRR{d}
		d.setNonblockConns()
		nc.connsNonblock = true
	}
	for i, l := range listeners {
		nc.ls = append(nc.ls, &nodeListener{index: uint32(i), l: l, static: true, rr: d != nil && l.Spec.Network != "udp"})
	}
	return nc
}

// nodeClusterOn reports whether prefork is the Node cluster primary of its
// workers: --node-cluster on, or auto and the command's executable is named
// node or nodejs (path is the command resolved, which may be a link to it).
func nodeClusterOn(c *config, path string) bool {
	switch c.nodeCluster {
	case nodeOn:
		return true
	case nodeOff:
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
	for _, nl := range nc.ls {
		if nl == nil || nl.static {
			continue
		}
		for slot, fd := range nl.socks {
			if slot != 0 {
				syscall.Close(fd)
			}
		}
		sock.Close(nl.l)
	}
}

// nodeEvent is what a worker's reader goroutine, or one of its timers, hands
// the owner: the owner gives it to the worker's handle.
type nodeEvent struct {
	kind nodeEventKind
	m    nodeMsg // evMessage: the message (a copy: the reader reuses its own)
	err  error   // evEnded: why the channel closed; nil for end of file
}

type nodeEventKind uint8

const (
	evMessage     nodeEventKind = iota // a cluster message for the owner
	evSuicide                          // the seeds' {act: 'suicide'}
	evEnded                            // the channel is closed
	evIdle                             // rr: the last newconn in flight was answered, while settling
	evSettled                          // rr: nodeSettle has passed since the worker was last seen busy
	evClosingWait                      // closingWait has passed since a stop began waiting on the worker
)

// nodeOutcome is what an event means for the supervisor.
type nodeOutcome uint8

const (
	nodeNothing  nodeOutcome = iota
	nodeReady                // it listens: it is up (READY=1)
	nodeStopping             // it is leaving on its own (STOPPING=1)
	nodeEnded                // its channel is closed
	nodeUnheeded             // a stop could not send disconnect: the stop signal goes now
)

// nodeSettle is how long an rr worker gets to read the request on a
// connection it took, before disconnect.
const nodeSettle = 100 * time.Millisecond

// nodeWorker is the primary's side of one worker. Its fields are the owner's,
// but keys, which the owner publishes for the dispatcher's thread.
type nodeWorker struct {
	nc    *nodeCluster
	conn  *nodeConn
	pid   int
	slot  int
	socks []int             // reuseport: duplicates of the slot's sockets, one per static listener
	post  func(e nodeEvent) // hands an event to the owner; called on the reader goroutine and timers
	seq   int64             // prefork's sequence numbers for replies and requests other than newconn

	detached       bool
	ended          bool // the channel is closed (evEnded handled)
	online         bool
	listening      bool
	disconnectSent bool
	selfDisconnect bool              // the worker began its own disconnect (exitedAfterDisconnect)
	allClosed      bool              // it closed every server it had: most likely its own disconnect has begun
	stopPending    bool              // a stop waits for it (allClosed) to finish on its own
	settling       bool              // rr: a stop waits for the connections it was handed to settle
	settleHanded   uint64            // rr: newconns sent when the settle timer was armed
	servers        map[string]uint32 // the worker's live servers: key → listener
	sentServers    []uint32          // --node-send-server: listeners sent, not yet listened on
	ownKeys        map[uint32][]byte // rr: listener → the JSON key of the worker's server on it

	keys atomic.Pointer[map[uint32][]byte] // a copy of ownKeys, for the dispatcher's thread
}

// newNodeWorker takes prefork's end of a new worker's channel and starts
// reading it; post hands the owner what the reader finds.
func (nc *nodeCluster) newNodeWorker(pid, slot, fd int, socks []int, post func(nodeEvent)) (*nodeWorker, error) {
	w := &nodeWorker{nc: nc, pid: pid, slot: slot, post: post,
		ownKeys: map[uint32][]byte{}, servers: map[string]uint32{}}
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
	c.handle = w.read
	c.refused = func(seq uint32, idle bool) {
		if nc.rr != nil {
			nc.rr.ack(pid, seq, false)
		}
		if idle {
			post(nodeEvent{kind: evIdle})
		}
	}
	c.closed = func(err error) {
		if nc.rr != nil {
			nc.rr.shut(pid)
		}
		post(nodeEvent{kind: evEnded, err: err})
	}
	c.start()
	return w, nil
}

// detach closes the channel once the worker is gone; its reader ends on its
// own. Events that come after are ignored.
func (w *nodeWorker) detach() {
	w.detached = true
	w.conn.close()
	w.closeSocks()
}

func (w *nodeWorker) closeSocks() {
	closeFds(w.socks)
	w.socks = nil
}

// read handles one message from the worker on the reader goroutine: a
// newconn's answer goes to the dispatcher, what the owner acts on to the
// owner. fd is a descriptor the worker sent with it, or -1.
func (w *nodeWorker) read(m *nodeMsg, fd int) {
	if fd >= 0 {
		syscall.Close(fd) // prefork has no use for a handle a worker sends
	}
	if !m.internal() {
		if m.Act == "suicide" {
			w.post(nodeEvent{kind: evSuicide})
		}
		return
	}
	if m.Cmd != "NODE_CLUSTER" {
		return // NODE_SOCKET_NOTIFY_CLOSE and others
	}
	if m.Ack.raw == "" || m.Act != "" {
		switch m.Act {
		case "online", "queryServer", "listening", "close", "exitedAfterDisconnect":
			w.post(nodeEvent{kind: evMessage, m: *m})
		}
		return
	}
	// A reply to a newconn (the only request prefork makes that gets one).
	if !m.Accepted {
		w.nc.log.Debug("node worker refused a connection", "pid", w.pid, "seq", m.Ack.raw)
	}
	if w.nc.rr != nil && m.Ack.num && m.Ack.n >= 0 && m.Ack.n <= 1<<32-1 {
		w.nc.rr.ack(w.pid, uint32(m.Ack.n), m.Accepted)
		if w.conn.answered() {
			w.post(nodeEvent{kind: evIdle})
		}
	}
}

// handle acts on an event from the worker's reader or timers (owner).
func (w *nodeWorker) handle(e nodeEvent) (nodeOutcome, error) {
	if w.detached {
		return nodeNothing, nil
	}
	switch e.kind {
	case evMessage:
		return w.message(&e.m), nil
	case evSuicide:
		w.nc.log.Info("node worker sent {act: 'suicide'}", "pid", w.pid)
		return nodeStopping, nil
	case evEnded:
		w.ended = true
		w.closeSocks() // nothing is sent on the channel any more
		return nodeEnded, e.err
	case evIdle, evSettled:
		if w.settling {
			return w.settle(e.kind == evSettled), nil
		}
	case evClosingWait:
		w.disconnect()
	}
	return nodeNothing, nil
}

// stop begins a graceful stop: disconnect, so that Node closes its servers and
// lets in-flight requests finish. In rr mode disconnect waits until the worker
// has answered every connection it was handed and has had nodeSettle to read
// their requests: Node's server.close() destroys connections on which no
// request has arrived yet (closeIdleConnections). It reports whether the
// caller should wait for the channel to close before sending the stop signal
// (a later nodeUnheeded says to send it after all): false when the worker
// never spoke the cluster protocol (it would ignore disconnect), or its
// channel is already closed.
func (w *nodeWorker) stop() (wait bool) {
	if w.ended {
		return false
	}
	if w.nc.rr == nil {
		return w.stopNow()
	}
	if !w.settling {
		w.settling = true
		w.settle(false)
	}
	return true
}

// settle sends disconnect once the worker has answered every connection it
// was handed and nodeSettle has passed since, with none handed meanwhile.
// While some are in flight it waits for evIdle (the reader saw the last
// answered); then for evSettled, nodeSettle on (timer: it was posted by one).
func (w *nodeWorker) settle(timer bool) nodeOutcome {
	if w.ended {
		w.settling = false
		return nodeNothing
	}
	inflight, handed := w.conn.newconns(true)
	if inflight > 0 {
		return nodeNothing
	}
	if !timer || handed != w.settleHanded {
		w.settleHanded = handed
		time.AfterFunc(nodeSettle, func() { w.post(nodeEvent{kind: evSettled}) })
		return nodeNothing
	}
	w.settling = false
	if !w.stopNow() {
		return nodeUnheeded
	}
	return nodeNothing
}

// stopNow sends disconnect, or waits for a worker that is leaving on its own;
// false: the caller signals it now.
func (w *nodeWorker) stopNow() (wait bool) {
	if !w.online {
		return false
	}
	if w.selfDisconnect || w.disconnectSent || w.stopPending {
		return true // never a second disconnect (the worker would exit 1)
	}
	if w.allClosed {
		// cluster.worker.disconnect() closes the servers first and says
		// exitedAfterDisconnect only once their connections have ended; a
		// disconnect from prefork meanwhile makes it drop the channel at once,
		// and the stop signal that follows cuts what is in flight. So wait for
		// it to finish; disconnect after all if it has not, half --grace on
		// (or when it listens again: it had only closed a server to reopen it).
		w.stopPending = true
		time.AfterFunc(w.nc.closingWait, func() { w.post(nodeEvent{kind: evClosingWait}) })
		return true
	}
	return w.disconnect() == nil
}

// disconnect sends disconnect unless the worker was sent one or began its own.
func (w *nodeWorker) disconnect() error {
	if w.selfDisconnect || w.disconnectSent {
		return nil
	}
	w.disconnectSent = true
	return w.conn.send(nodeLine(map[string]any{"cmd": "NODE_CLUSTER", "act": "disconnect", "seq": w.nextSeq()}), -1)
}

// nextSeq is a fresh sequence number for a message prefork starts.
func (w *nodeWorker) nextSeq() int64 {
	w.seq++
	return w.seq
}

// sendConn is the rr sender: connection conn under seq, from listener index.
// It is EAGAIN when the worker has no server on that listener (yet).
// Dispatcher's thread.
func (w *nodeWorker) sendConn(seq, index uint32, conn int) error {
	key := w.key(index)
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
// Dispatcher's thread.
func (w *nodeWorker) canTake(index uint32) bool { return w.key(index) != nil }

func (w *nodeWorker) key(index uint32) []byte {
	if k := w.keys.Load(); k != nil {
		return (*k)[index]
	}
	return nil
}

// publishKeys gives the dispatcher's thread a copy of ownKeys.
func (w *nodeWorker) publishKeys() {
	k := make(map[uint32][]byte, len(w.ownKeys))
	for i, v := range w.ownKeys {
		k[i] = v
	}
	w.keys.Store(&k)
}

// message handles one cluster message from the worker.
func (w *nodeWorker) message(m *nodeMsg) nodeOutcome {
	switch m.Act {
	case "online":
		w.online = true
		w.sendServers()
	case "queryServer":
		w.queryServer(m)
	case "listening":
		first := !w.listening
		w.listening = true
		w.allClosed = false
		if w.stopPending {
			w.disconnect() // it reopened a server: not leaving on its own after all
		}
		if w.nc.rr != nil {
			w.nc.rr.kick()
		}
		if first {
			w.nc.warnUnasked()
			return nodeReady
		}
	case "close":
		if i, ok := w.servers[m.Key]; ok {
			delete(w.servers, m.Key)
			if string(w.ownKeys[i]) == string(jsonString(m.Key)) {
				delete(w.ownKeys, i)
				for k, j := range w.servers { // another server of the worker on that listener
					if j == i {
						w.ownKeys[i] = jsonString(k)
						break
					}
				}
				w.publishKeys()
			}
			w.allClosed = len(w.servers) == 0
		}
	case "exitedAfterDisconnect":
		w.selfDisconnect = true
		if m.Seq.raw != "" {
			w.conn.send(nodeLine(map[string]any{"cmd": "NODE_CLUSTER", "ack": json.RawMessage(m.Seq.raw), "seq": w.nextSeq()}), -1)
		}
		return nodeStopping
	}
	return nodeNothing
}

// sendServers sends every listener as process.send(MSG, server) would
// (--node-send-server), once the worker is online.
func (w *nodeWorker) sendServers() {
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
