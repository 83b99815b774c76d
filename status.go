//go:build linux || darwin

// This file publishes prefork's state: the --status-file JSON, rewritten
// atomically whenever it changes, the one-line STATUS= sent upward, and the
// metrics, the same state in the Prometheus text exposition format.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prefork/prefork/internal/rr"
)

type statusFile struct {
	PID        int      `json:"pid"`
	Mode       string   `json:"mode"`
	Balance    string   `json:"balance,omitempty"` // --balance: least, roundrobin, source; reuseport's default "hash"; none in shared mode
	Generation int      `json:"generation"`
	Stopping   bool     `json:"stopping"`
	Listeners  []string `json:"listeners"`
	// AcceptQueue is, by listener, the connections waiting in its accept
	// queue at the last sample (null where it cannot be read); absent when
	// nothing samples it (pool.go).
	AcceptQueue []*int         `json:"accept_queue,omitempty"`
	Workers     []workerStatus `json:"workers"`
}

type workerStatus struct {
	Slot       int       `json:"slot"`
	PID        int       `json:"pid"`
	Generation int       `json:"generation"`
	State      string    `json:"state"`
	Started    time.Time `json:"started"`
	Restarts   int       `json:"restarts"`
	LastExit   *int      `json:"last_exit"`
	Status     string    `json:"status,omitempty"`
	// UpBy is how it came up: notify (READY=1), listening (Node), seen
	// waiting (for connections: SeenIn says how, accept, recv, epoll, poll
	// or select) or delay (the delay rule); absent while it is not up.
	UpBy   string `json:"up_by,omitempty"`
	SeenIn string `json:"seen_in,omitempty"`
	// RSS (bytes, the process group's) and CPU (seconds) at the last sample,
	// where /proc can be read; Replaced is why the slot's worker was last
	// replaced (max-rss, max-lifetime, reload, STOPPING=1, watchdog, …).
	RSS      int64   `json:"rss,omitempty"`
	CPU      float64 `json:"cpu_seconds,omitempty"`
	Replaced string  `json:"replaced,omitempty"`
	// rr mode, as the file was last rewritten: connections handed to the
	// worker (redistributed ones again) and those not yet acked.
	RRHanded   *uint64 `json:"rr_handed,omitempty"`
	RRInflight *int    `json:"rr_inflight,omitempty"`
}

func (s *supervisor) snapshot() statusFile {
	st := statusFile{PID: os.Getpid(), Mode: s.c.mode.String(), Balance: s.balanceName(), Generation: s.gen,
		Stopping: s.stopping, Listeners: []string{}, Workers: []workerStatus{}}
	var rrStats map[int]rr.WorkerStats
	if s.rr != nil {
		rrStats = map[int]rr.WorkerStats{}
		for _, ws := range s.rr.Stats() {
			rrStats[ws.ID] = ws
		}
	}
	for i, l := range s.listeners {
		st.Listeners = append(st.Listeners, l.Bound())
		if s.pool != nil && i < len(s.pool.stats.queues) {
			var q *int
			if n := s.pool.stats.queues[i]; n >= 0 {
				q = &n
			}
			st.AcceptQueue = append(st.AcceptQueue, q)
		}
	}
	if s.nc != nil { // the sockets bound on a Node worker's request
		st.Listeners = append(st.Listeners, s.nc.Bound()...)
	}
	for _, w := range s.workers {
		ws := workerStatus{Slot: w.slot.index, PID: w.pid, Generation: w.gen, State: w.state.String(),
			Started: w.started.UTC().Truncate(time.Millisecond), Restarts: w.slot.restarts, Status: w.status}
		ws.Replaced = w.slot.replaced
		ws.UpBy, ws.SeenIn = w.upBy.String(), w.seenIn.String()
		if s.pool != nil {
			if u, ok := s.pool.stats.usage[w.pid]; ok {
				ws.RSS, ws.CPU = u.RSS, u.CPU.Round(10*time.Millisecond).Seconds()
			}
		}
		if w.slot.lastExit >= 0 {
			last := w.slot.lastExit
			ws.LastExit = &last
		}
		if r, ok := rrStats[w.pid]; ok {
			ws.RRHanded, ws.RRInflight = &r.Handed, &r.Inflight
		}
		st.Workers = append(st.Workers, ws)
	}
	sort.Slice(st.Workers, func(i, j int) bool {
		a, b := st.Workers[i], st.Workers[j]
		return a.Slot < b.Slot || a.Slot == b.Slot && a.Generation < b.Generation
	})
	return st
}

// publish writes the status file and STATUS= when something changed.
func (s *supervisor) publish() {
	st := s.snapshot()
	b, _ := json.MarshalIndent(st, "", "  ")
	if string(b) == s.lastState {
		return
	}
	s.lastState = string(b)
	if s.c.statusFile != "" {
		err := writeAtomic(s.c.statusFile, append(b, '\n'))
		switch { // once when it starts failing, not at every change
		case err != nil && !s.statusFailing:
			s.log.Warn("cannot write status file", "path", s.c.statusFile, "err", err)
		case err == nil && s.statusFailing:
			s.log.Info("status file written again", "path", s.c.statusFile)
		}
		s.statusFailing = err != nil
	}
	// The generations are those of the ready workers, the ones serving: during
	// a reload, or after an abandoned one, that is not s.gen.
	ready, lo, hi := 0, s.gen, s.gen
	for _, w := range st.Workers {
		if w.State == stateReady.String() {
			if ready == 0 || w.Generation < lo {
				lo = w.Generation
			}
			if ready == 0 || w.Generation > hi {
				hi = w.Generation
			}
			ready++
		}
	}
	gens := fmt.Sprintf("generation %d", lo)
	if hi != lo {
		gens = fmt.Sprintf("generations %d-%d", lo, hi)
	}
	line := fmt.Sprintf("STATUS=%d of %d workers ready, %s, mode %s", ready, len(s.slots), gens, s.c.mode)
	if line != s.lastStatus { // the file changes with every reading of RSS and CPU; this line does not
		s.lastStatus = line
		s.up.send(line)
	}
}

// writeAtomic replaces path with data so that readers never see half of it.
func writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Metrics: the Prometheus text exposition format (version 0.0.4), for
// `prefork --ctl PATH metrics` and for --metrics-file, a file rewritten
// atomically every few seconds for node_exporter's textfile collector: prefork
// serves no HTTP itself.

// metricsInterval is how often --metrics-file is rewritten.
const metricsInterval = 5 * time.Second

// promText writes the text exposition format: every family's HELP and TYPE
// once, before its samples.
type promText struct{ b bytes.Buffer }

func (p *promText) family(name, typ, help string) {
	help = strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(help)
	p.b.WriteString("# HELP " + name + " " + help + "\n# TYPE " + name + " " + typ + "\n")
}

// sample writes one line; labels are name, value pairs.
func (p *promText) sample(name string, v float64, labels ...string) {
	p.b.WriteString(name)
	if len(labels) > 0 {
		p.b.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				p.b.WriteByte(',')
			}
			p.b.WriteString(labels[i] + `="` + escapeLabel(labels[i+1]) + `"`)
		}
		p.b.WriteByte('}')
	}
	p.b.WriteByte(' ')
	p.b.WriteString(formatValue(v))
	p.b.WriteByte('\n')
}

func escapeLabel(v string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(v)
}

func formatValue(v float64) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case v == math.Trunc(v) && math.Abs(v) < 1e15:
		return strconv.FormatInt(int64(v), 10)
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// renderMetrics writes a sample of prefork's state as Prometheus text.
func renderMetrics(st *ctlStatus) []byte {
	var p promText
	p.family("prefork_info", "gauge", "Always 1; the labels say prefork's pid, mode and version.")
	p.sample("prefork_info", 1, "pid", strconv.Itoa(st.PID), "mode", st.Mode, "balance", st.Balance, "version", strings.TrimPrefix(version(), "prefork "))
	p.family("prefork_generation", "gauge", "The newest generation started: 1 at start, +1 at every reload, abandoned ones too; each worker's is in the status.")
	p.sample("prefork_generation", float64(st.Generation))
	p.family("prefork_worker_slots", "gauge", "Worker slots: the number of workers prefork keeps running.")
	p.sample("prefork_worker_slots", float64(len(st.slots)))

	states := map[string]int{}
	for _, w := range st.Workers {
		states[w.State]++
	}
	p.family("prefork_workers", "gauge", "Worker processes by state.")
	for _, s := range workerStateNames {
		p.sample("prefork_workers", float64(states[s]), "state", s)
	}

	p.family("prefork_worker_restarts_total", "counter", "Restarts of the worker in a slot, failed starts included.")
	for _, sl := range st.slots {
		p.sample("prefork_worker_restarts_total", float64(sl.restarts), "slot", strconv.Itoa(sl.slot))
	}
	p.family("prefork_reloads_total", "counter", "Rolling reloads started (HUP or prefork --ctl reload).")
	p.sample("prefork_reloads_total", float64(st.Reloads))
	p.family("prefork_reload_failures_total", "counter", "Rolling reloads abandoned because a new worker did not come up.")
	p.sample("prefork_reload_failures_total", float64(st.ReloadFailures))
	p.family("prefork_reload_in_progress", "gauge", "1 while a rolling reload runs.")
	p.sample("prefork_reload_in_progress", b2f(st.Reloading > 0))

	p.family("prefork_worker_start_time_seconds", "gauge", "Start time of each worker process since the Unix epoch.")
	for _, w := range st.Workers {
		p.sample("prefork_worker_start_time_seconds", float64(w.Started.UnixMilli())/1e3, workerLabels(w)...)
	}
	p.family("prefork_worker_up_by", "gauge", "1 for each worker that came up, labelled with how: notify (READY=1), listening (Node), seen waiting (for connections, in seen_in: accept, recv, epoll, poll, select) or delay.")
	for _, w := range st.Workers {
		labels := append(workerLabels(w), "up_by", w.UpBy)
		if w.SeenIn != "" {
			labels = append(labels, "seen_in", w.SeenIn)
		}
		if w.UpBy != "" {
			p.sample("prefork_worker_up_by", 1, labels...)
		}
	}
	p.family("prefork_worker_resident_memory_bytes", "gauge", "Resident memory of each worker's process group.")
	for _, w := range st.Workers {
		if w.RSS != nil {
			p.sample("prefork_worker_resident_memory_bytes", float64(*w.RSS), workerLabels(w)...)
		}
	}
	p.family("prefork_worker_cpu_seconds_total", "counter", "User and system CPU time of each worker's process group.")
	for _, w := range st.Workers {
		if w.CPU != nil {
			p.sample("prefork_worker_cpu_seconds_total", *w.CPU, workerLabels(w)...)
		}
	}

	if st.RR != nil {
		p.family("prefork_rr_connections_handed_total", "counter", "rr mode: connections sent to a worker, redistributed ones counted again.")
		p.sample("prefork_rr_connections_handed_total", float64(st.RR.Handed))
		p.family("prefork_rr_connections_acked_total", "counter", "rr mode: connections a worker acknowledged.")
		p.sample("prefork_rr_connections_acked_total", float64(st.RR.Acked))
		p.family("prefork_rr_connections_redistributed_total", "counter", "rr mode: unacknowledged connections of a worker that went away, sent to another.")
		p.sample("prefork_rr_connections_redistributed_total", float64(st.RR.Redistributed))
		p.family("prefork_rr_connections_pending", "gauge", "rr mode: accepted connections waiting for a worker with room.")
		p.sample("prefork_rr_connections_pending", float64(st.RR.Pending))
		p.family("prefork_rr_worker_connections_handed_total", "counter", "rr mode: connections sent to each worker, redistributed ones counted again.")
		for _, w := range st.Workers {
			if w.RRHanded != nil {
				p.sample("prefork_rr_worker_connections_handed_total", float64(*w.RRHanded), workerLabels(w)...)
			}
		}
		p.family("prefork_rr_connections_inflight", "gauge", "rr mode: connections sent to each worker and not yet acknowledged.")
		for _, w := range st.Workers {
			if w.RRInflight != nil {
				p.sample("prefork_rr_connections_inflight", float64(*w.RRInflight), workerLabels(w)...)
			}
		}
	}
	if st.OutputDropped != nil {
		p.family("prefork_output_dropped_lines_total", "counter", "--worker-output prefix or json: worker output lines dropped because prefork's stdout or stderr was not read fast enough.")
		p.sample("prefork_output_dropped_lines_total", float64(*st.OutputDropped))
	}
	if len(st.Queues) > 0 {
		p.family("prefork_listen_queue_length", "gauge", "Connections waiting in a stream listener's accept queue (TCP or unix).")
		for _, q := range st.Queues {
			p.sample("prefork_listen_queue_length", float64(q.Length), "listener", q.Listener, "addr", q.Addr)
		}
	}
	return p.b.Bytes()
}

// workerLabels identify one worker process: its slot, and its pid, since during
// a reload or a graceful stop two processes share a slot.
func workerLabels(w ctlWorker) []string {
	return []string{"slot", strconv.Itoa(w.Slot), "pid", strconv.Itoa(w.PID)}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// metricsWriter rewrites --metrics-file every metricsInterval until closed.
type metricsWriter struct {
	path   string
	events chan<- event
	log    *slog.Logger
	quit   chan struct{}
	done   chan struct{}
}

// startMetricsFile checks that path can be written, then starts the writer.
func startMetricsFile(path string, events chan<- event, log *slog.Logger) (*metricsWriter, error) {
	if err := checkWritable(path); err != nil { // as --status-file is checked (startup.go)
		return nil, err
	}
	m := &metricsWriter{path: path, events: events, log: log, quit: make(chan struct{}), done: make(chan struct{})}
	go m.run()
	return m, nil
}

func (m *metricsWriter) run() {
	defer close(m.done)
	t := time.NewTicker(metricsInterval)
	defer t.Stop()
	failing := false
	for {
		reply := make(chan ctlResponse, 1)
		select {
		case m.events <- ctlEvent{req: ctlRequest{Cmd: "metrics"}, reply: reply}:
		case <-m.quit:
			return
		}
		var r ctlResponse
		select {
		case r = <-reply:
		case <-m.quit:
			return
		}
		sampleUsage(r.Status)
		if err := writeAtomic(m.path, renderMetrics(r.Status)); err != nil {
			if !failing {
				m.log.Warn("cannot write the metrics file", "path", m.path, "err", err)
			}
			failing = true
		} else {
			failing = false
		}
		select {
		case <-t.C:
		case <-m.quit:
			return
		}
	}
}

// close stops the writer and removes the file: stale numbers from a prefork
// that is gone would mislead.
func (m *metricsWriter) close() {
	if m == nil {
		return
	}
	close(m.quit)
	<-m.done
	os.Remove(m.path)
}
