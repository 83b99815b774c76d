//go:build linux || darwin

// This file publishes prefork's state: the --status-file JSON, rewritten
// atomically whenever it changes, and the one-line STATUS= sent upward.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"
)

type statusFile struct {
	PID        int      `json:"pid"`
	Mode       string   `json:"mode"`
	Generation int      `json:"generation"`
	Stopping   bool     `json:"stopping"`
	Listeners  []string `json:"listeners"`
	// AcceptQueue is, by listener, the connections waiting in its accept
	// queue at the last sample (null where it cannot be read); absent when
	// nothing samples it (poolrun.go).
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
	// RSS (bytes, the process group's) and CPU (seconds) at the last sample,
	// where /proc can be read; Replaced is why the slot's worker was last
	// replaced (max-rss, max-lifetime, reload, STOPPING=1, watchdog, …).
	RSS      int64   `json:"rss,omitempty"`
	CPU      float64 `json:"cpu_seconds,omitempty"`
	Replaced string  `json:"replaced,omitempty"`
}

func (s *supervisor) snapshot() statusFile {
	st := statusFile{PID: os.Getpid(), Mode: s.c.mode.String(), Generation: s.gen, Stopping: s.stopping,
		Listeners: []string{}, Workers: []workerStatus{}}
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
	for _, w := range s.workers {
		ws := workerStatus{Slot: w.slot.index, PID: w.pid, Generation: w.gen, State: w.state,
			Started: w.started.UTC().Truncate(time.Millisecond), Restarts: w.slot.restarts, Status: w.status}
		ws.Replaced = w.slot.replaced
		if s.pool != nil {
			if u, ok := s.pool.stats.usage[w.pid]; ok {
				ws.RSS, ws.CPU = u.RSS, u.CPU.Round(10*time.Millisecond).Seconds()
			}
		}
		if w.slot.lastExit >= 0 {
			last := w.slot.lastExit
			ws.LastExit = &last
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
		if w.State == stateReady {
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
