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
package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/prefork/prefork/internal/rr"
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
type dispatcherNodeRR struct{ d *rr.Dispatcher }

func (r dispatcherNodeRR) addListener(fd int) (uint32, error)    { return r.d.AddListener(fd) }
func (r dispatcherNodeRR) kick()                                 { r.d.Kick() }
func (r dispatcherNodeRR) ack(id int, seq uint32, accepted bool) { r.d.Ack(id, seq, accepted) }

// nodeCluster is the state every Node worker's channel shares: prefork's
// listeners and the sockets bound on request, in one place, guarded by mu.
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

	mu sync.Mutex
	ls []*nodeListener // index = the listener's index in the dispatcher
}

// newNodeCluster wraps prefork's listeners (static: the order of listeners);
// d is the rr dispatcher, nil in other modes.
func newNodeCluster(log *slog.Logger, c *config, listeners []*listener, d *rr.Dispatcher) *nodeCluster {
	nc := &nodeCluster{log: log, mode: c.mode, backlog: c.backlog, closingWait: c.grace / 2}
	if c.nodeSendServer != "" {
		nc.sendServer, _ = json.Marshal(c.nodeSendServer)
	}
	if d != nil {
		nc.rr = dispatcherNodeRR{d}
		d.SetNonblockConns()
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
	allClosed      bool              // it closed every server it had: most likely its own disconnect has begun
	stopPending    bool              // a stop waits for it (allClosed) to finish on its own
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
		time.AfterFunc(w.nc.closingWait, func() {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.disconnectLocked()
		})
		return true
	}
	return w.disconnectLocked() == nil
}

// disconnectLocked sends disconnect unless the worker was sent one or began
// its own.
func (w *nodeWorker) disconnectLocked() error {
	if w.selfDisconnect || w.disconnectSent {
		return nil
	}
	w.disconnectSent = true
	line := nodeLine(map[string]any{"cmd": "NODE_CLUSTER", "act": "disconnect", "seq": w.conn.nextSeq()})
	return w.conn.send(line, -1)
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
		w.allClosed = false
		if w.stopPending {
			w.disconnectLocked() // it reopened a server: not leaving on its own after all
		}
		w.mu.Unlock()
		if first {
			w.notify(map[string]string{"READY": "1"})
			w.nc.warnUnasked()
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
			w.allClosed = len(w.servers) == 0
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
