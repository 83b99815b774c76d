//go:build linux || darwin

// Package nodecluster is prefork's side of the Node.js cluster channel: it is
// the cluster primary of unmodified `node app.js` workers, over the IPC
// channel Node opens at NODE_CHANNEL_FD (docs/node.md: what works). It
// answers queryServer from prefork's listeners (or binds on the first request
// and shares the socket) in shared, reuseport and rr mode; hands rr
// connections over as newconn; acks exitedAfterDisconnect; sends disconnect
// for a graceful stop; and reports listening and the seeds' {act: 'suicide'}
// as Ready and Stopping.
//
// Ownership. A Cluster and its Workers belong to one goroutine, the owner
// (prefork's supervisor loop): New, Attach, Handle, Stop, Detach and Close
// run on it, and only it touches the listener registry and each worker's
// protocol state. Each worker's reader goroutine parses the lines: a
// newconn's answer (two lines per rr connection) it gives the dispatcher
// itself; everything else it hands the owner as an Event through the post
// function given to Attach, and the worker's timers post Events too. The
// owner gives each back to Worker.Handle, whose Outcome says what it means
// for the supervisor. The rr dispatcher's thread calls SendConn and CanTake,
// which read only the keys the owner publishes (an immutable map behind an
// atomic pointer) and the channel's write lock, the one lock left: the owner,
// the dispatcher and the reader all write the socket (conn.go).
//
// cluster.go holds the cluster and the per-worker message handling;
// query.go answers queryServer from the listener registry, by the matching
// and binding rules of listen.go; codec.go and conn.go are the wire.
package nodecluster

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prefork/prefork/internal/sock"
)

// RR is what the cluster needs of the rr dispatcher.
type RR interface {
	// AddListener makes the dispatcher accept on one more listener (a socket
	// bound on a worker's request) and returns its index.
	AddListener(fd int) (uint32, error)
	// RemoveListener stops accepting on one of those (no worker serves on it
	// any more) and closes the connections from it no worker has taken.
	RemoveListener(index uint32)
	// Ack reports a worker's answer to a newconn: accepted, or refused (the
	// connection goes to another worker). Called on the reader goroutine.
	Ack(pid int, seq uint32, accepted bool)
	// Kick makes the dispatcher look again for a worker that can take what it holds.
	Kick()
	// Shut says that a worker's channel is closed: what it did not ack goes to
	// another worker. Called on the reader goroutine.
	Shut(pid int)
}

// Config is what the cluster is given once.
type Config struct {
	Log       *slog.Logger
	Listeners []*sock.Listener // prefork's own, in order: fd 3+i in a worker
	Reuseport bool             // each slot has its own SO_REUSEPORT sockets
	Backlog   int              // for sockets bound on request; <= 0: the worker's, or the system maximum
	// SendServer: send every listener once a worker is online, as
	// process.send(SendServer, server) would (--node-send-server); "" for none.
	SendServer string
	// ClosingWait: how long a stop waits for a worker that closed all its
	// servers to end its channel itself before it gets disconnect.
	ClosingWait time.Duration
	RR          RR // the dispatcher in rr mode, nil otherwise
	// ConnsNonblock: the dispatcher accepts connections non-blocking already;
	// otherwise SendConn sets O_NONBLOCK on each (Node's libuv does not set
	// it on a descriptor it receives).
	ConnsNonblock bool
	// The sockets bound on request (registry.go): PerWorker that one worker's
	// requests may keep bound, MaxSockets descriptors they may hold in all
	// (0: the defaults of the same names), and Reserve descriptors that
	// prefork keeps free under RLIMIT_NOFILE whatever the workers ask.
	PerWorker, MaxSockets, Reserve int
}

// Cluster is the state every Node worker's channel shares: prefork's
// listeners and the sockets bound on request, in one place (the owner's).
type Cluster struct {
	log         *slog.Logger
	reuseport   bool
	backlog     int
	sendServer  []byte // SendServer as a JSON string; nil when not given
	rr          RR     // rr mode only
	closingWait time.Duration
	// connsNonblock: the rr dispatcher accepts connections non-blocking already.
	connsNonblock bool

	ls []*listener // index = the listener's index in the dispatcher; nil: closed

	workers                        map[*Worker]bool // attached, not yet detached
	perWorker, maxSockets, reserve int
	held                           int // descriptors the sockets bound on request hold
}

// New wraps prefork's listeners.
func New(c Config) *Cluster {
	nc := &Cluster{log: c.Log, reuseport: c.Reuseport, backlog: c.Backlog, rr: c.RR,
		closingWait: c.ClosingWait, connsNonblock: c.ConnsNonblock, workers: map[*Worker]bool{},
		perWorker: c.PerWorker, maxSockets: c.MaxSockets, reserve: c.Reserve}
	if nc.perWorker <= 0 {
		nc.perWorker = PerWorker
	}
	if nc.maxSockets <= 0 {
		nc.maxSockets = MaxSockets
	}
	if c.SendServer != "" {
		nc.sendServer, _ = json.Marshal(c.SendServer)
	}
	for i, l := range c.Listeners {
		nc.ls = append(nc.ls, &listener{index: uint32(i), l: l, static: true, rr: c.RR != nil && l.Spec.Network != "udp"})
	}
	return nc
}

// Close closes the sockets bound on request (prefork's own are the caller's).
func (nc *Cluster) Close() {
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

// BoundSocket is a listener the cluster bound on a worker's request, with
// its sockets: prefork's status shows its accept queue (the sum over Socks).
type BoundSocket struct {
	L     *sock.Listener
	Socks []int // each slot's in reuseport mode, else the listener's
}

// BoundSockets lists the listeners bound on the workers' requests that are
// open now, with their sockets (owner).
func (nc *Cluster) BoundSockets() []BoundSocket {
	var bs []BoundSocket
	for _, nl := range nc.ls {
		if nl == nil || nl.static {
			continue
		}
		b := BoundSocket{L: nl.l}
		for _, fd := range nl.socks {
			b.Socks = append(b.Socks, fd)
		}
		if len(b.Socks) == 0 {
			b.Socks = []int{nl.l.FD}
		}
		bs = append(bs, b)
	}
	return bs
}

// Event is what a worker's reader goroutine, or one of its timers, hands
// the owner: the owner gives it to the worker's handle.
type Event struct {
	kind eventKind
	m    msg   // evMessage: the message (a copy: the reader reuses its own)
	err  error // evEnded: why the channel closed; nil for end of file
}

type eventKind uint8

const (
	evMessage     eventKind = iota // a message for the owner
	evEnded                        // the channel is closed
	evIdle                         // rr: the last newconn in flight was answered, while settling
	evSettled                      // rr: settleTime has passed since the worker was last seen busy
	evClosingWait                  // closingWait has passed since a stop began waiting on the worker
)

// Outcome is what an event means for the supervisor.
type Outcome uint8

const (
	Nothing  Outcome = iota
	Ready            // it listens: it is up (READY=1)
	Stopping         // it is leaving on its own (STOPPING=1)
	Ended            // its channel is closed
	Unheeded         // a stop could not send disconnect: the stop signal goes now
)

// settleTime is how long an rr worker gets to read the request on a
// connection it took, before disconnect.
const settleTime = 100 * time.Millisecond

// Worker is the primary's side of one worker. Its fields are the owner's,
// but keys, which the owner publishes for the dispatcher's thread.
type Worker struct {
	nc    *Cluster
	conn  *channel
	pid   int
	slot  int
	socks []int         // reuseport: duplicates of the slot's sockets, one per static listener
	post  func(e Event) // hands an event to the owner; called on the reader goroutine and timers
	seq   int64         // prefork's sequence numbers for replies and requests other than newconn

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
	stopping       bool              // Stop was called: what it serves on may close
	bound          int               // sockets bound on its requests, still open
	toldLimit      bool              // the log said that its requests hit a limit

	keys atomic.Pointer[map[uint32][]byte] // a copy of ownKeys, for the dispatcher's thread
}

// Attach takes prefork's end of a new worker's channel and starts
// reading it; post hands the owner what the reader finds.
func (nc *Cluster) Attach(pid, slot, fd int, socks []int, post func(Event)) (*Worker, error) {
	w := &Worker{nc: nc, pid: pid, slot: slot, post: post,
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
	c, err := newChannel(fd, fmt.Sprintf("prefork-node-worker-%d", pid))
	if err != nil {
		closeFds(w.socks)
		return nil, err
	}
	w.conn = c
	c.handle = w.read
	c.refused = func(seq uint32, idle bool) {
		if nc.rr != nil {
			nc.rr.Ack(pid, seq, false)
		}
		if idle {
			post(Event{kind: evIdle})
		}
	}
	c.closed = func(err error) {
		if nc.rr != nil {
			nc.rr.Shut(pid)
		}
		post(Event{kind: evEnded, err: err})
	}
	c.start()
	nc.workers[w] = true
	return w, nil
}

// Detach closes the channel once the worker is gone; its reader ends on its
// own. Events that come after are ignored.
func (w *Worker) Detach() {
	w.detached = true
	w.conn.close()
	w.closeSocks()
	delete(w.nc.workers, w)
	if !w.stopping {
		w.nc.claim(w)
	}
	w.nc.sweep()
}

func (w *Worker) closeSocks() {
	closeFds(w.socks)
	w.socks = nil
}

// read handles one message from the worker on the reader goroutine: a
// newconn's answer goes to the dispatcher, what the owner acts on to the
// owner. fd is a descriptor the worker sent with it, or -1.
func (w *Worker) read(m *msg, fd int) {
	if fd >= 0 {
		syscall.Close(fd) // prefork has no use for a handle a worker sends
	}
	if !m.internal() {
		if m.Act == "suicide" { // the seeds' {act: 'suicide'}
			w.post(Event{kind: evMessage, m: *m})
		}
		return
	}
	if m.Cmd != "NODE_CLUSTER" {
		return // NODE_SOCKET_NOTIFY_CLOSE and others
	}
	if m.Ack.raw == "" || m.Act != "" {
		switch m.Act {
		case "online", "queryServer", "listening", "close", "exitedAfterDisconnect":
			w.post(Event{kind: evMessage, m: *m})
		}
		return
	}
	// A reply to a newconn (the only request prefork makes that gets one).
	if !m.Accepted {
		w.nc.log.Debug("node worker refused a connection", "pid", w.pid, "seq", m.Ack.raw)
	}
	if w.nc.rr != nil && m.Ack.num && m.Ack.n >= 0 && m.Ack.n <= 1<<32-1 {
		w.nc.rr.Ack(w.pid, uint32(m.Ack.n), m.Accepted)
		if w.conn.answered() {
			w.post(Event{kind: evIdle})
		}
	}
}

// Handle acts on an event from the worker's reader or timers (owner).
func (w *Worker) Handle(e Event) (Outcome, error) {
	if w.detached {
		return Nothing, nil
	}
	switch e.kind {
	case evMessage:
		return w.message(&e.m), nil
	case evEnded:
		w.ended = true
		w.closeSocks() // nothing is sent on the channel any more
		return Ended, e.err
	case evIdle, evSettled:
		if w.settling {
			return w.settle(e.kind == evSettled), nil
		}
	case evClosingWait:
		w.disconnect()
	}
	return Nothing, nil
}

// Stop begins a graceful stop: disconnect, so that Node closes its servers and
// lets in-flight requests finish. In rr mode disconnect waits until the worker
// has answered every connection it was handed and has had settleTime to read
// their requests: Node's server.close() destroys connections on which no
// request has arrived yet (closeIdleConnections). It reports whether the
// caller should wait for the channel to close before sending the stop signal
// (a later Unheeded says to send it after all): false when the worker
// never spoke the cluster protocol (it would ignore disconnect), or its
// channel is already closed.
func (w *Worker) Stop() (wait bool) {
	if !w.stopping {
		w.stopping = true
		w.nc.claim(w)
		w.nc.sweep()
	}
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
// was handed and settleTime has passed since, with none handed meanwhile.
// While some are in flight it waits for evIdle (the reader saw the last
// answered); then for evSettled, settleTime on (timer: it was posted by one).
func (w *Worker) settle(timer bool) Outcome {
	if w.ended {
		w.settling = false
		return Nothing
	}
	inflight, handed := w.conn.newconns(true)
	if inflight > 0 {
		return Nothing
	}
	if !timer || handed != w.settleHanded {
		w.settleHanded = handed
		time.AfterFunc(settleTime, func() { w.post(Event{kind: evSettled}) })
		return Nothing
	}
	w.settling = false
	if !w.stopNow() {
		return Unheeded
	}
	return Nothing
}

// stopNow sends disconnect, or waits for a worker that is leaving on its own;
// false: the caller signals it now.
func (w *Worker) stopNow() (wait bool) {
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
		time.AfterFunc(w.nc.closingWait, func() { w.post(Event{kind: evClosingWait}) })
		return true
	}
	return w.disconnect() == nil
}

// disconnect sends disconnect unless the worker was sent one or began its own.
func (w *Worker) disconnect() error {
	if w.selfDisconnect || w.disconnectSent {
		return nil
	}
	w.disconnectSent = true
	return w.conn.send(encodeLine(map[string]any{"cmd": "NODE_CLUSTER", "act": "disconnect", "seq": w.nextSeq()}), -1)
}

// nextSeq is a fresh sequence number for a message prefork starts.
func (w *Worker) nextSeq() int64 {
	w.seq++
	return w.seq
}

// SendConn is the rr sender: connection conn under seq, from listener index.
// It is EAGAIN when the worker has no server on that listener (yet).
// Dispatcher's thread.
func (w *Worker) SendConn(seq, index uint32, conn int) error {
	key := w.key(index)
	if key == nil {
		return syscall.EAGAIN // no server on that listener (yet): another worker's turn
	}
	switch err := w.conn.sendNewconn(key, seq, conn, !w.nc.connsNonblock); err {
	case errBusy:
		return syscall.EAGAIN
	case errClosed:
		return syscall.EPIPE
	default:
		return err
	}
}

// CanTake reports whether the worker has a server on listener index.
// Dispatcher's thread.
func (w *Worker) CanTake(index uint32) bool { return w.key(index) != nil }

func (w *Worker) key(index uint32) []byte {
	if k := w.keys.Load(); k != nil {
		return (*k)[index]
	}
	return nil
}

// publishKeys gives the dispatcher's thread a copy of ownKeys.
func (w *Worker) publishKeys() {
	k := make(map[uint32][]byte, len(w.ownKeys))
	for i, v := range w.ownKeys {
		k[i] = v
	}
	w.keys.Store(&k)
}

// message handles one message from the worker.
func (w *Worker) message(m *msg) Outcome {
	if !m.internal() { // {act: 'suicide'}
		w.nc.log.Info("node worker sent {act: 'suicide'}", "pid", w.pid)
		return Stopping
	}
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
			w.nc.rr.Kick()
		}
		if first {
			w.nc.unclaim(w.slot)
			w.nc.sweep()
			w.nc.warnUnasked()
			return Ready
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
			w.nc.sweep()
		}
	case "exitedAfterDisconnect":
		w.selfDisconnect = true
		if m.Seq.raw != "" {
			w.conn.send(encodeLine(map[string]any{"cmd": "NODE_CLUSTER", "ack": json.RawMessage(m.Seq.raw), "seq": w.nextSeq()}), -1)
		}
		return Stopping
	}
	return Nothing
}
