//go:build unix

// This file defines the contenders: the same Node.js app under prefork,
// Node's cluster and PM2, and the same Go server under prefork and the bare
// launcher. Each starts on a fresh loopback port and returns once it answers.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// contender is one way of running two workers of the same server.
type contender struct {
	group   string // "node", "go" or "c"
	name    string
	prefork bool // started by prefork, with a status file
	master  bool // the process started hands out connections: its CPU per request is measured
	start   func(port int) (*proc, error)
	pending string // why it cannot run in this tree, if so
}

const workers = 2

// statusPath is the status file of the prefork started on port.
func statusPath(port int) string {
	return filepath.Join(outDir, fmt.Sprintf("status-%d.json", port))
}

// startPrefork runs prefork with n workers of argv and waits until every
// worker is ready by the status file.
func startPrefork(port, n int, mode string, extra []string, argv ...string) (*proc, error) {
	return startPreforkWith(binPath("prefork"), nil, port, n, mode, extra, argv...)
}

// startPreforkEnv is startPrefork with env added to prefork's (and so the workers').
func startPreforkEnv(env []string, port, n int, mode string, extra []string, argv ...string) (*proc, error) {
	return startPreforkWith(binPath("prefork"), env, port, n, mode, extra, argv...)
}

// startPreforkBin is startPrefork with another prefork binary (-before).
func startPreforkBin(bin string, port, n int, mode string, extra []string, argv ...string) (*proc, error) {
	return startPreforkWith(bin, nil, port, n, mode, extra, argv...)
}

// startPreforkWith runs the prefork binary bin with env added and waits until
// every worker is ready by the status file.
func startPreforkWith(bin string, env []string, port, n int, mode string, extra []string, argv ...string) (*proc, error) {
	sf := statusPath(port)
	os.Remove(sf)
	args := []string{bin, "-n", strconv.Itoa(n), "--mode", mode, "-q",
		"--status-file", sf, "-l", fmt.Sprintf("127.0.0.1:%d", port)}
	args = append(append(args, extra...), "--")
	p, err := start(env, append(args, argv...)...)
	if err != nil {
		return nil, err
	}
	if _, err := waitStatus(sf, p, 20*time.Second+time.Duration(n)*40*time.Millisecond, func(s status) bool { return s.readyCount() == n }); err != nil {
		p.Stop()
		return nil, fmt.Errorf("prefork --mode %s: %w", mode, err)
	}
	return p, nil
}

// answering waits until p answers on port, or stops it.
func answering(p *proc, port int, err error) (*proc, error) {
	if err != nil {
		return nil, err
	}
	if err := waitAnswer(port, p, 20*time.Second); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

func contenders() []contender {
	app := filepath.Join(benchDir, "app.js")
	cluster := filepath.Join(benchDir, "cluster.js")
	nodeUnder := func(mode string) func(int) (*proc, error) {
		return func(port int) (*proc, error) {
			p, err := startPrefork(port, workers, mode, []string{"--ready-delay", "300ms"}, nodePath, app)
			return answering(p, port, err)
		}
	}
	// The app as a user writes it: listen(PORT) in every worker, prefork
	// answering as its cluster primary (--node-cluster, on for node).
	nodeListen := func(mode string) func(int) (*proc, error) {
		return func(port int) (*proc, error) {
			p, err := startPreforkEnv([]string{"PORT=" + strconv.Itoa(port)}, port, workers, mode, nil, nodePath, app)
			return answering(p, port, err)
		}
	}
	nodeCluster := func(sched string) func(int) (*proc, error) {
		return func(port int) (*proc, error) {
			p, err := start([]string{"SCHED=" + sched, "WORKERS=" + strconv.Itoa(workers), "PORT=" + strconv.Itoa(port)}, nodePath, cluster)
			return answering(p, port, err)
		}
	}
	under := func(server, mode string) func(int) (*proc, error) {
		return func(port int) (*proc, error) {
			p, err := startPrefork(port, workers, mode, []string{"--ready", "notify"}, binPath(server))
			return answering(p, port, err)
		}
	}
	before := func(server string) func(int) (*proc, error) {
		return func(port int) (*proc, error) {
			p, err := startPreforkBin(beforeBin, port, workers, "rr", []string{"--ready", "notify"}, binPath(server))
			return answering(p, port, err)
		}
	}
	bare := func(server string) func(int) (*proc, error) {
		return func(port int) (*proc, error) {
			p, err := start(nil, binPath("barelaunch"), "-addr", fmt.Sprintf("127.0.0.1:%d", port), "-n", strconv.Itoa(workers), "--", binPath(server))
			return answering(p, port, err)
		}
	}
	ref := func(server string) func(int) (*proc, error) {
		return func(port int) (*proc, error) {
			p, err := start(nil, binPath("refmaster"), "-addr", fmt.Sprintf("127.0.0.1:%d", port), "-n", strconv.Itoa(workers), "--", binPath(server))
			return answering(p, port, err)
		}
	}
	cs := []contender{
		{group: "node", name: "prefork shared", prefork: true, start: nodeUnder("shared")},
		{group: "node", name: "prefork reuseport", prefork: true, start: nodeUnder("reuseport")},
		{group: "node", name: "prefork shared listen()", prefork: true, start: nodeListen("shared")},
		{group: "node", name: "prefork rr listen()", prefork: true, start: nodeListen("rr")},
		{group: "node", name: "cluster SCHED_RR", start: nodeCluster("rr")},
		{group: "node", name: "cluster SCHED_NONE", start: nodeCluster("none")},
		{group: "node", name: "pm2 cluster", start: startPM2, pending: pm2Pending},
		{group: "go", name: "prefork shared", prefork: true, master: true, start: under("goserver", "shared")},
		{group: "go", name: "prefork reuseport", prefork: true, master: true, start: under("goserver", "reuseport")},
		{group: "go", name: "prefork rr", prefork: true, master: true, start: under("goserver", "rr"), pending: rrPending},
		{group: "go", name: "prefork rr, before", prefork: true, master: true, start: before("goserver"), pending: beforePending},
		{group: "go", name: "reference master", master: true, start: ref("goserver")},
		{group: "go", name: "bare launcher", start: bare("goserver")},
		{group: "c", name: "prefork shared", prefork: true, master: true, start: under("cworker", "shared"), pending: cPending},
		{group: "c", name: "prefork reuseport", prefork: true, master: true, start: under("cworker", "reuseport"), pending: cPending},
		{group: "c", name: "prefork rr", prefork: true, master: true, start: under("cworker", "rr"), pending: or(cPending, rrPending)},
		{group: "c", name: "prefork rr, before", prefork: true, master: true, start: before("cworker"), pending: or(cPending, beforePending)},
		{group: "c", name: "reference master", master: true, start: ref("cworker"), pending: cPending},
		{group: "c", name: "bare launcher", start: bare("cworker"), pending: cPending},
	}
	if beforeBin == "" {
		cs = slices.DeleteFunc(cs, func(c contender) bool { return c.name == "prefork rr, before" })
	}
	return cs
}

// pm2Pending says why PM2 cannot run, if it cannot.
var pm2Pending string

// rrPending says why rr cannot run, if it cannot.
var rrPending string

// beforeBin is an earlier prefork binary measured beside this one in rr mode
// (-before); beforePending is set when there is none.
var beforeBin, beforePending string

// cPending says why the C server cannot run (no C compiler), if it cannot.
var cPending string

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// probeRR finds out whether this tree's prefork implements --mode rr: the
// worker side of the handoff has to be there, and prefork has to start.
func probeRR() string {
	port := nextPort()
	p, err := startPrefork(port, 1, "rr", []string{"--ready", "notify", "--max-restarts", "1"}, binPath("goserver"))
	if err != nil {
		msg := strings.TrimSpace(err.Error())
		return "pending: rr is not on main yet (" + firstLine(msg, 120) + ")"
	}
	defer p.Stop()
	if err := waitAnswer(port, p, 5*time.Second); err != nil {
		return "pending: prefork --mode rr starts but does not answer (" + firstLine(err.Error(), 120) + ")"
	}
	return ""
}

// startPM2 runs bench/app.js in PM2 cluster mode with two instances; its God
// daemon lives on between runs (PM2's normal way) and is killed at the end.
func startPM2(port int) (*proc, error) {
	name := "prefork-bench-" + strconv.Itoa(port)
	app := filepath.Join(benchDir, "app.js")
	cmd := exec.Command(pm2Path, "start", app, "-i", strconv.Itoa(workers), "--name", name)
	cmd.Env = append(os.Environ(), "PORT="+strconv.Itoa(port), "PM2_HOME="+pm2Home)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pm2 start: %v: %s", err, out)
	}
	p := &proc{done: make(chan struct{}), stderr: nil}
	p.stop = func() {
		c := exec.Command(pm2Path, "delete", name)
		c.Env = append(os.Environ(), "PM2_HOME="+pm2Home)
		c.Run()
	}
	if err := waitAnswer(port, nil, 20*time.Second); err != nil {
		p.Stop()
		return nil, fmt.Errorf("pm2: %w", err)
	}
	liveMu.Lock()
	live[p] = true
	liveMu.Unlock()
	return p, nil
}

// pm2GodPID is the PM2 daemon's pid, from PM2_HOME/pm2.pid.
func pm2GodPID() (int, error) {
	b, err := os.ReadFile(filepath.Join(pm2Home, "pm2.pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// pm2Kill stops the PM2 daemon this run used.
func pm2Kill() {
	if pm2Path == "" {
		return
	}
	c := exec.Command(pm2Path, "kill")
	c.Env = append(os.Environ(), "PM2_HOME="+pm2Home)
	c.Run()
}

func firstLine(s string, n int) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}
