//go:build unix

// This file starts and stops the processes under test: each in its own process
// group, stopped with SIGTERM and then SIGKILL to the group after a bound, and
// reads what the harness needs from them (prefork's status file, VmRSS).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one started contender.
type proc struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	done   chan struct{} // closed once the process has exited
	stop   func()        // optional custom stop (pm2)
}

var (
	liveMu sync.Mutex
	live   = map[*proc]bool{}
)

// start runs argv in a new process group with extra environment.
func start(env []string, argv ...string) (*proc, error) {
	c := exec.Command(argv[0], argv[1:]...)
	c.Env = append(os.Environ(), env...)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var errb bytes.Buffer
	c.Stderr = &limitWriter{&errb, 64 << 10}
	c.Stdout = c.Stderr
	if err := c.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: c, stderr: &errb, done: make(chan struct{})}
	go func() { c.Wait(); close(p.done) }()
	liveMu.Lock()
	live[p] = true
	liveMu.Unlock()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop asks politely, then kills the whole process group; prefork's workers,
// in groups of their own, die with it through the parent-death signal.
func (p *proc) Stop() {
	if p.stop != nil {
		p.stop()
	}
	if p.cmd != nil {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(3 * time.Second):
		}
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(3 * time.Second):
		}
	}
	liveMu.Lock()
	delete(live, p)
	liveMu.Unlock()
}

// stopAll is the harness's exit path: nothing it started outlives it.
func stopAll() {
	liveMu.Lock()
	ps := make([]*proc, 0, len(live))
	for p := range live {
		ps = append(ps, p)
	}
	liveMu.Unlock()
	for _, p := range ps {
		p.Stop()
	}
}

type limitWriter struct {
	b *bytes.Buffer
	n int
}

func (w *limitWriter) Write(p []byte) (int, error) {
	if room := w.n - w.b.Len(); room > 0 {
		w.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// status is the part of prefork's --status-file the harness reads.
type status struct {
	PID     int `json:"pid"`
	Workers []struct {
		Slot  int    `json:"slot"`
		PID   int    `json:"pid"`
		State string `json:"state"`
	} `json:"workers"`
}

func readStatus(path string) (status, error) {
	var s status
	b, err := os.ReadFile(path)
	if err != nil {
		return s, err
	}
	return s, json.Unmarshal(b, &s)
}

// readyCount is how many workers the status file shows ready.
func (s status) readyCount() int {
	n := 0
	for _, w := range s.Workers {
		if w.State == "ready" {
			n++
		}
	}
	return n
}

// waitStatus polls the status file every millisecond until ok says yes or
// the timeout passes; a large file (hundreds of workers) every 10 ms, so that
// parsing it does not take the CPU the workers are starting on.
func waitStatus(path string, p *proc, timeout time.Duration, ok func(status) bool) (status, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p != nil && p.exited() {
			return status{}, fmt.Errorf("exited: %s", lastLines(p.stderr.String(), 5))
		}
		s, err := readStatus(path)
		if err == nil && ok(s) {
			return s, nil
		}
		if len(s.Workers) > 64 {
			time.Sleep(10 * time.Millisecond)
		} else {
			time.Sleep(time.Millisecond)
		}
	}
	return status{}, fmt.Errorf("status file %s: not there after %v", path, timeout)
}

// rssKiB reads VmRSS of pid from /proc (Linux).
func rssKiB(pid int) (float64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			fs := strings.Fields(v)
			if len(fs) > 0 {
				return strconv.ParseFloat(fs[0], 64)
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

func lastLines(s string, n int) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, " | ")
}

// cpuTime is the user+system CPU time pid has used, from /proc/PID/stat.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// the command name (field 2) may hold spaces: count from its closing paren
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64) // utime, field 14
	st, err2 := strconv.ParseInt(f[12], 10, 64) // stime, field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times: 100 on every
// Linux the Go runtime supports.
const clockTicks = 100

// masterCPU is the CPU time of a contender's master so far, or 0.
func masterCPU(r *running) time.Duration {
	if !r.master || r.p.cmd == nil {
		return 0
	}
	d, _ := cpuTime(r.p.cmd.Process.Pid)
	return d
}
