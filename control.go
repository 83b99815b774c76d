//go:build linux || darwin

// This file holds the control socket (--control PATH: one JSON request line,
// one JSON answer line): its commands, declared once in ctlCommands; its
// owner-goroutine side, where a request arrives as a ctlEvent and the answer
// goes back on its reply channel, at once or when the reload or scale it waits
// for ends; and what its server (internal/ctl: a unix stream socket that
// admits prefork's own uid and root) does with a request line. ctl.go is the
// client; status.go renders the metrics.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/prefork/prefork/internal/ctl"
	"github.com/prefork/prefork/internal/procstat"
	"github.com/prefork/prefork/internal/rr"
	"github.com/prefork/prefork/internal/sock"
)

// ctlRequest is what a client sends: one JSON line.
type ctlRequest struct {
	Cmd     string `json:"cmd"`               // a name in ctlCommands
	Workers int    `json:"workers,omitempty"` // scale
}

// ctlResponse is prefork's answer: one JSON line. reload and scale answer once
// they are done; stop answers at once and keeps the connection open until
// prefork exits.
type ctlResponse struct {
	Server  string     `json:"server"`
	OK      bool       `json:"ok"`
	Error   string     `json:"error,omitempty"`
	Message string     `json:"message,omitempty"`
	Status  *ctlStatus `json:"status,omitempty"`
	Metrics string     `json:"metrics,omitempty"`
}

// ctlStatus is the status file plus what only the control socket reports,
// sampled when asked rather than written on every change.
type ctlStatus struct {
	statusFile
	Workers        []ctlWorker `json:"workers"`             // in place of statusFile's
	Reloading      int         `json:"reloading,omitempty"` // the generation a reload in progress brings in
	Reloads        int         `json:"reloads"`
	ReloadFailures int         `json:"reload_failures"`
	RR             *rr.Totals  `json:"rr,omitempty"`
	Queues         []ctlQueue  `json:"listen_queues,omitempty"`
	OutputDropped  *uint64     `json:"output_dropped_lines,omitempty"` // --worker-output prefix or json
	Sampled        time.Time   `json:"sampled"`
	slots          []slotCount // restarts per slot, for the metrics
}

// ctlWorker is a status file's worker plus its usage and rr counters. RSS and
// CPU are sampled for this answer (and shadow any the status file has).
type ctlWorker struct {
	workerStatus
	RSS        *int64   `json:"rss,omitempty"` // bytes, the worker's whole process group
	CPU        *float64 `json:"cpu_seconds,omitempty"`
	RRInflight *int     `json:"rr_inflight,omitempty"`
	RRHanded   *uint64  `json:"rr_handed,omitempty"`
	RRAcked    *uint64  `json:"rr_acked,omitempty"`
	RRUnread   bool     `json:"rr_unread,omitempty"` // it has acked none of its rr_inflight connections for seconds: it does not speak the rr protocol
}

// ctlQueue is one listener's accept queue at the time of the sample.
type ctlQueue struct {
	Listener string `json:"listener"`
	Addr     string `json:"addr"`
	Length   int    `json:"length"`
}

type slotCount struct{ slot, restarts int }

// ctlEvent is a client's request on its way to the owner goroutine.
type ctlEvent struct {
	req   ctlRequest
	reply chan ctlResponse // buffered (1): the owner never blocks on it
	conn  syscall.Conn     // the client's connection (an upgrade hands it to the new image); nil for the metrics file
}

// ctlState is the owner goroutine's part of the control socket: the clients
// waiting for a reload or a scale to finish.
type ctlState struct {
	server         *ctl.Server
	metrics        *metricsWriter
	reloads        []ctlWaiter
	scales         []ctlWaiter
	reloadFailures int
}

// ctlWaiter is a client waiting for a reload to generation gen, or for a
// scale to n workers (base: each slot's restarts when the scale began).
type ctlWaiter struct {
	gen, n int
	base   map[*slot]int
	reply  chan ctlResponse
}

// ctlCommand is a control command, declared once in ctlCommands: the client
// (ctl.go) parses its arguments and shows its outcome by it, the server admits
// and answers by it, the owner goroutine runs its handler, and --help lists it.
type ctlCommand struct {
	name, usage string // its name, and its usage line in --help

	json, timeout, workers bool // the arguments it takes: --json, --timeout DUR, N
	waits                  bool // answers once what it asked for is done, not at once
	stays                  bool // the connection stays open until prefork exits
	metrics                bool // the server renders the status as Prometheus text

	handle func(s *supervisor, e ctlEvent)    // in the owner goroutine
	done   func(c *ctlRun, r ctlResponse) int // the client's output and exit status
}

var ctlCommands = []ctlCommand{
	{name: "status", usage: "status [--json]", json: true, handle: (*supervisor).ctlSample, done: (*ctlRun).status},
	{name: "reload", usage: "reload [--timeout DUR]", timeout: true, waits: true, handle: (*supervisor).ctlReload, done: (*ctlRun).message},
	{name: "scale", usage: "scale N [--timeout DUR]", workers: true, timeout: true, waits: true, handle: (*supervisor).ctlScale, done: (*ctlRun).message},
	{name: "stop", usage: "stop [--timeout DUR]", timeout: true, stays: true, handle: (*supervisor).ctlStop, done: (*ctlRun).stopped},
	{name: "metrics", usage: "metrics", metrics: true, handle: (*supervisor).ctlSample, done: (*ctlRun).metrics},
	{name: "upgrade", usage: "upgrade [--timeout DUR]", timeout: true, waits: true, handle: (*supervisor).ctlUpgrade, done: (*ctlRun).message},
}

func ctlLookup(name string) *ctlCommand {
	if i := slices.IndexFunc(ctlCommands, func(c ctlCommand) bool { return c.name == name }); i >= 0 {
		return &ctlCommands[i]
	}
	return nil
}

// ctlList names the commands as "a, b or c", with their N if usage ("scale N").
func ctlList(usage bool) string {
	names := make([]string, len(ctlCommands))
	for i, c := range ctlCommands {
		names[i] = c.name
		if usage {
			names[i], _, _ = strings.Cut(c.usage, " [")
		}
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// ctlSynopsis is the commands' usage lines for --help, two to a line.
func ctlSynopsis() string {
	var lines []string
	for i := 0; i < len(ctlCommands); i += 2 {
		u := []string{ctlCommands[i].usage}
		if i+1 < len(ctlCommands) {
			u = append(u, ctlCommands[i+1].usage)
		}
		lines = append(lines, strings.Join(u, " | "))
	}
	return strings.Join(lines, " |\n"+strings.Repeat(" ", 26))
}

// controlRequest answers a client, in the owner goroutine.
func (s *supervisor) controlRequest(e ctlEvent) { ctlLookup(e.req.Cmd).handle(s, e) }

func (e ctlEvent) fail(format string, a ...any) {
	e.reply <- ctlResponse{Error: fmt.Sprintf(format, a...)}
}

func (s *supervisor) ctlSample(e ctlEvent) { e.reply <- ctlResponse{OK: true, Status: s.ctlSnapshot()} }

func (s *supervisor) ctlStop(e ctlEvent) {
	s.log.Info("stop asked for on the control socket")
	s.beginStop(s.c.drainDelay)
	e.reply <- ctlResponse{OK: true, Message: "stopping"}
}

func (s *supervisor) ctlReload(e ctlEvent) {
	switch {
	case s.stopping:
		e.fail("prefork is stopping")
	case s.reloadGen != 0: // join the reload under way
		s.ctl.reloads = append(s.ctl.reloads, ctlWaiter{gen: s.reloadGen, reply: e.reply})
	default: // wait first: the reload may end at once (a worker that cannot be forked)
		s.ctl.reloads = append(s.ctl.reloads, ctlWaiter{gen: s.gen + 1, reply: e.reply})
		s.log.Info("reload asked for on the control socket")
		s.signal(syscall.SIGHUP)
	}
}

func (s *supervisor) ctlScale(e ctlEvent) {
	n := e.req.Workers
	lo, hi := s.slotBounds() // -n MIN:MAX bounds it as TTIN and TTOU
	switch {
	case s.stopping:
		e.fail("prefork is stopping")
		return
	case n < lo || n > hi:
		e.fail("cannot scale to %d workers: give %d to %d", n, lo, hi)
		return
	}
	s.log.Info("scale asked for on the control socket", "workers", n)
	if err := s.scaleTo(n); err != nil {
		e.fail("cannot add a worker (at %d of %d): %v", len(s.slots), n, err)
		return
	}
	w := ctlWaiter{n: n, reply: e.reply, base: map[*slot]int{}}
	for _, sl := range s.slots {
		w.base[sl] = sl.restarts
	}
	s.ctl.scales = append(s.ctl.scales, w)
}

// ctlCheck answers the clients waiting for a scale whose outcome is known, and
// every waiting client once prefork stops; the owner loop calls it after every
// event and signal.
func (s *supervisor) ctlCheck() {
	if len(s.ctl.scales) == 0 && len(s.ctl.reloads) == 0 {
		return
	}
	if s.stopping {
		for _, w := range s.ctl.reloads {
			w.reply <- ctlResponse{Error: fmt.Sprintf("prefork is stopping; the reload to generation %d did not finish", w.gen)}
		}
		for _, w := range s.ctl.scales {
			w.reply <- ctlResponse{Error: "prefork is stopping"}
		}
		s.ctl.reloads, s.ctl.scales = nil, nil
		return
	}
	s.ctl.scales = slices.DeleteFunc(s.ctl.scales, func(w ctlWaiter) bool {
		r, done := s.scaleOutcome(w)
		if done {
			w.reply <- r
		}
		return done
	})
}

func (s *supervisor) scaleOutcome(w ctlWaiter) (ctlResponse, bool) {
	if len(s.slots) != w.n {
		return ctlResponse{Error: fmt.Sprintf("the worker count changed to %d before %d workers were up", len(s.slots), w.n)}, true
	}
	for _, sl := range s.slots {
		if base, ok := w.base[sl]; ok && sl.restarts > base && sl.failures > 0 {
			return ctlResponse{Error: fmt.Sprintf("slot %d: the worker failed to start (last exit status %d); prefork keeps retrying after backoff",
				sl.index, sl.lastExit)}, true
		}
	}
	if !s.allReady() {
		return ctlResponse{}, false
	}
	stopping := 0
	for _, wk := range s.workers {
		if wk.state == stateStopping {
			stopping++
		}
	}
	msg := fmt.Sprintf("%d workers up", w.n)
	if stopping > 0 {
		msg += fmt.Sprintf(", %d stopping", stopping)
	}
	return ctlResponse{OK: true, Message: msg}, true
}

// ctlReloadFinished answers the clients waiting for a reload up to gen.
func (s *supervisor) ctlReloadFinished(gen int, err error) {
	if err != nil {
		s.ctl.reloadFailures++
	}
	s.ctl.reloads = slices.DeleteFunc(s.ctl.reloads, func(w ctlWaiter) bool {
		switch {
		case w.gen > gen:
			return false
		case err != nil:
			w.reply <- ctlResponse{Error: fmt.Sprintf("generation %d abandoned: %v; the old workers keep serving", gen, err)}
		default:
			w.reply <- ctlResponse{OK: true, Message: fmt.Sprintf("every slot runs generation %d", gen)}
		}
		return true
	})
}

// ctlSnapshot is the state the control socket reports, sampled in the owner
// goroutine; the client's goroutine adds each worker's memory and CPU time.
func (s *supervisor) ctlSnapshot() *ctlStatus {
	st := &ctlStatus{statusFile: s.snapshot(), Reloading: s.reloadGen, Reloads: s.gen - 1,
		ReloadFailures: s.ctl.reloadFailures, Sampled: time.Now().UTC()}
	for _, w := range st.statusFile.Workers {
		st.Workers = append(st.Workers, ctlWorker{workerStatus: w})
	}
	st.statusFile.Workers = nil
	for _, sl := range s.slots {
		st.slots = append(st.slots, slotCount{sl.index, sl.restarts})
	}
	if s.out != nil {
		n := s.out.Dropped()
		st.OutputDropped = &n
	}
	if s.rr != nil {
		t := s.rr.Totals()
		st.RR = &t
		byPID := map[int]rr.WorkerStats{}
		for _, ws := range s.rr.Stats() {
			byPID[ws.ID] = ws
		}
		for i := range st.Workers {
			if ws, ok := byPID[st.Workers[i].PID]; ok {
				inflight, handed, acked := ws.Inflight, ws.Handed, ws.Acked
				st.Workers[i].RRInflight, st.Workers[i].RRHanded, st.Workers[i].RRAcked = &inflight, &handed, &acked
				st.Workers[i].RRUnread = ws.Unread
			}
		}
	}
	// Each listener's queue is the sum over its sockets (every slot's in
	// reuseport mode), as the pool and the status file count it.
	lengths := map[int]int{}
	for _, q := range s.queueSockets() {
		if n, err := procstat.AcceptQueue(q.fd); err == nil && q.fd >= 0 {
			lengths[q.listener] += n
		}
	}
	for i, l := range s.listeners {
		if n, ok := lengths[i]; ok {
			st.Queues = append(st.Queues, ctlQueue{Listener: l.Spec.Name, Addr: l.Bound(), Length: n})
		}
	}
	if s.nc != nil { // the listeners prefork bound for Node workers' listen()
		for _, b := range s.nc.BoundSockets() {
			n, ok := 0, false
			for _, fd := range b.Socks {
				if k, err := procstat.AcceptQueue(fd); err == nil && b.L.Spec.Network != "udp" {
					n, ok = n+k, true
				}
			}
			if ok {
				st.Queues = append(st.Queues, ctlQueue{Listener: b.L.Spec.Name, Addr: b.L.Bound(), Length: n})
			}
		}
	}
	return st
}

// sampleUsage fills in each worker's memory and CPU time (its whole process
// group), outside the owner goroutine: reading /proc takes a while.
func sampleUsage(st *ctlStatus) {
	pids := make([]int, len(st.Workers))
	for i, w := range st.Workers {
		pids[i] = w.PID
	}
	usage, err := procstat.GroupUsage(pids, nil) // procstat_*.go
	if err != nil {
		return
	}
	for i := range st.Workers {
		if u, ok := usage[st.Workers[i].PID]; ok {
			rss, cpu := u.RSS, u.CPU.Seconds()
			st.Workers[i].RSS, st.Workers[i].CPU = &rss, &cpu
		}
	}
}

// ctlSummary is the one-line description of prefork a status table starts with.
func ctlSummary(st *ctlStatus) string {
	var b strings.Builder
	fmt.Fprintf(&b, "prefork pid %d, mode %s", st.PID, st.Mode)
	if st.Balance != "" {
		fmt.Fprintf(&b, ", balance %s", st.Balance)
	}
	fmt.Fprintf(&b, ", generation %d", st.Generation)
	if st.Reloading > 0 {
		b.WriteString(" (reload in progress)")
	}
	if st.Stopping {
		b.WriteString(", stopping")
	}
	fmt.Fprintf(&b, "\nlisteners: %s", strings.Join(st.Listeners, ", "))
	return b.String()
}

// openControl starts what --control and --metrics-file ask for.
func (s *supervisor) openControl() error {
	var err error
	if s.c.control != "" {
		var inherited *sock.Listener // an upgrade's new image serves the socket it inherited
		if st := s.adopt.state(); st != nil && st.Control != nil {
			inherited = sock.Restore(sock.Spec{Name: "control", Network: "unix", Addr: s.c.control, Text: s.c.control},
				st.Control.FD, s.c.control, st.Control.Path)
		}
		if s.ctl.server, err = ctl.Open(ctl.Config{Path: s.c.control, Log: s.log,
			Handle: s.ctlHandle, Refuse: ctlRefuse, Inherited: inherited}); err != nil {
			return fmt.Errorf("--control %s: %w", s.c.control, err)
		}
	}
	if s.c.metricsFile != "" {
		if s.ctl.metrics, err = startMetricsFile(s.c.metricsFile, s.events, s.log); err != nil {
			s.ctl.server.Close()
			return fmt.Errorf("--metrics-file %s: %w", s.c.metricsFile, err)
		}
	}
	return nil
}

// closeControl removes the control socket and the metrics file.
func (s *supervisor) closeControl() {
	s.ctl.metrics.close()
	s.ctl.server.Close()
}

const ctlServerName = "prefork" // every answer carries it: a client knows it reached prefork

func ctlAnswer(r ctlResponse) []byte {
	r.Server = ctlServerName
	b, _ := json.Marshal(r)
	return b
}

func ctlRefuse(msg string) []byte { return ctlAnswer(ctlResponse{Error: msg}) }

// rawFD is the descriptor under a socket of Go's poller; -1 if none.
func rawFD(c syscall.Conn) int {
	fd := -1
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(f uintptr) { fd = int(f) })
	}
	return fd
}

// answerFD writes one answer line on a client connection handed over by an
// upgrade, and closes it.
func answerFD(fd int, r ctlResponse) {
	f := os.NewFile(uintptr(fd), "control client")
	defer f.Close()
	f.Write(append(ctlAnswer(r), '\n'))
}

// ctlHandle answers one client's request line, in the client's goroutine
// (internal/ctl): the owner goroutine decides, the client's goroutine samples
// usage and renders.
func (s *supervisor) ctlHandle(line []byte, conn syscall.Conn, quit <-chan struct{}) ([]byte, bool) {
	var req ctlRequest
	if err := json.Unmarshal(line, &req); err != nil {
		return ctlRefuse("malformed request: " + err.Error()), false
	}
	cmd := ctlLookup(req.Cmd)
	if cmd == nil {
		return ctlRefuse(fmt.Sprintf("unknown command %q", req.Cmd)), false
	}
	s.log.Debug("control request", "cmd", req.Cmd)
	reply := make(chan ctlResponse, 1)
	select {
	case s.events <- ctlEvent{req, reply, conn}:
	case <-quit:
		return nil, false
	}
	var r ctlResponse
	select {
	case r = <-reply:
	case <-quit:
		return nil, false
	}
	if r.Status != nil {
		sampleUsage(r.Status)
		if cmd.metrics {
			r.Metrics, r.Status = string(renderMetrics(r.Status)), nil
		}
	}
	return ctlAnswer(r), cmd.stays && r.OK
}
