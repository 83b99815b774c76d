//go:build linux

// Command reliability builds prefork and measures, in every mode, what a
// client and the process table see: failed requests across rolling reloads
// under keep-alive load and under connection churn, failed requests while
// workers are SIGKILLed every 200 ms (and, in rr mode, connections lost that no
// worker had acked), processes left behind after a SIGKILL of prefork, and
// zombies when prefork is pid 1 in a pid namespace. Loopback only, bounded
// in time and count; it runs in a few minutes. See docs/reliability.md.
//
//	go run -C reliability . [-modes shared,reuseport,rr] [-reloads 10] [-kill-for 20s]
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

var (
	modesFlag   = flag.String("modes", "shared,reuseport,rr", "modes to test, comma-separated")
	reloadsFlag = flag.Int("reloads", 10, "rolling reloads per run")
	killFor     = flag.Duration("kill-for", 20*time.Second, "how long workers are killed")
	killEvery   = flag.Duration("kill-every", 200*time.Millisecond, "one worker SIGKILLed this often")
	clientsFlag = flag.Int("clients", 4, "concurrent clients")
	keepFlag    = flag.Bool("keep", false, "keep the work directory")
	onlyFlag    = flag.String("only", "", "run only the checks whose name contains this")
)

// statusFile is the part of prefork's --status-file the suite reads.
type statusFile struct {
	Listeners []string `json:"listeners"`
	Workers   []struct {
		Slot       int    `json:"slot"`
		PID        int    `json:"pid"`
		Generation int    `json:"generation"`
		State      string `json:"state"`
	} `json:"workers"`
}

// preforkRun is one prefork process the suite started. Its output goes to a
// file, not a pipe: a pipe would keep Wait waiting for whatever descendant
// still holds it.
type preforkRun struct {
	cmd    *exec.Cmd
	status string
	log    string
	done   chan struct{}
}

// output is what prefork and its workers wrote so far.
func (p *preforkRun) output() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

var preforkBin, workDir string

func startPrefork(env []string, wrapper []string, args ...string) (*preforkRun, error) {
	dir, err := os.MkdirTemp(workDir, "run.")
	if err != nil {
		return nil, err
	}
	p := &preforkRun{status: filepath.Join(dir, "status.json"), log: filepath.Join(dir, "output"), done: make(chan struct{})}
	out, err := os.Create(p.log)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	argv := append(append(wrapper, preforkBin, "--status-file", p.status), args...)
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = out, out
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *preforkRun) read() (statusFile, bool) {
	var st statusFile
	b, err := os.ReadFile(p.status)
	return st, err == nil && json.Unmarshal(b, &st) == nil
}

func (p *preforkRun) waitFor(what string, timeout time.Duration, cond func(statusFile) bool) (statusFile, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if st, ok := p.read(); ok && cond(st) {
			return st, nil
		}
		select {
		case <-p.done:
			return statusFile{}, fmt.Errorf("prefork exited while waiting for %s:\n%s", what, tail(p.output()))
		case <-time.After(10 * time.Millisecond):
		}
	}
	return statusFile{}, fmt.Errorf("timed out waiting for %s:\n%s", what, tail(p.output()))
}

// allReady waits until n workers of generation gen are ready and no other runs.
func (p *preforkRun) allReady(n, gen int) (statusFile, error) {
	return p.waitFor(fmt.Sprintf("%d ready workers of generation %d", n, gen), 60*time.Second, func(st statusFile) bool {
		if len(st.Workers) != n {
			return false
		}
		for _, w := range st.Workers {
			if w.State != "ready" || w.Generation != gen {
				return false
			}
		}
		return true
	})
}

// stop asks prefork to stop and returns its exit status.
func (p *preforkRun) stop(sig syscall.Signal) int {
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	return p.cmd.ProcessState.ExitCode()
}

func tail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

func main() {
	if os.Getenv(roleEnv) == "ackworker" {
		os.Exit(runAckWorker())
	}
	flag.Parse()
	var err error
	if workDir, err = os.MkdirTemp("", "prefork-reliability."); err != nil {
		fatal(err)
	}
	if !*keepFlag {
		defer os.RemoveAll(workDir)
	}
	preforkBin = filepath.Join(workDir, "prefork")
	build := exec.Command("go", "build", "-o", preforkBin, ".")
	build.Dir = repoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		fatal(fmt.Errorf("go build: %v\n%s", err, out))
	}
	fmt.Printf("machine: %s, %d CPUs, %s, kernel %s\n", runtime.GOOS+"/"+runtime.GOARCH, runtime.NumCPU(), runtime.Version(), kernel())
	fmt.Printf("load: %d clients on 127.0.0.1; %d reloads; a worker SIGKILLed every %v for %v\n\n",
		*clientsFlag, *reloadsFlag, *killEvery, *killFor)
	type check struct {
		name string
		run  func() outcome
	}
	var checks []check
	for _, mode := range strings.Split(*modesFlag, ",") {
		for _, keepAlive := range []bool{true, false} {
			checks = append(checks, check{fmt.Sprintf("%-9s reloads  %-10s", mode, loadName(keepAlive)),
				func() outcome { return reloads(mode, keepAlive) }})
		}
		checks = append(checks,
			check{fmt.Sprintf("%-9s kills    %-10s", mode, "churn+ka"), func() outcome { return kills(mode) }},
			check{fmt.Sprintf("%-9s orphans  %-10s", mode, "SIGKILL"), func() outcome { return orphansAfterKill(mode, "") }})
	}
	checks = append(checks,
		check{fmt.Sprintf("%-9s orphans  %-10s", "shared", "sh+child"), func() outcome { return orphansAfterKill("shared", "sleep 60 & wait") }},
		check{fmt.Sprintf("%-9s zombies  %-10s", "shared", "pid 1"), zombies})
	bad := false
	for _, c := range checks {
		if strings.Contains(c.name, *onlyFlag) {
			bad = report(c.name, c.run()) || bad
		}
	}
	if bad {
		fmt.Println("\nRESULT: targets missed (see above)")
		os.Exit(1)
	}
	fmt.Println("\nRESULT: every target met")
}

func loadName(keepAlive bool) string {
	if keepAlive {
		return "keep-alive"
	}
	return "churn"
}

// outcome is one line of the report; bad says a target was missed.
type outcome struct {
	line string
	bad  bool
	err  error
}

func report(name string, o outcome) bool {
	switch {
	case o.err != nil:
		fmt.Printf("%s  ERROR %v\n", name, o.err)
		return true
	case o.bad:
		fmt.Printf("%s  %s  <- MISSED\n", name, o.line)
	default:
		fmt.Printf("%s  %s\n", name, o.line)
	}
	return o.bad
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "reliability:", err)
	os.Exit(1)
}

func kernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

// reloads runs the demo worker under load through several rolling reloads.
func reloads(mode string, keepAlive bool) outcome {
	const n = 2
	p, err := startPrefork(nil, nil, "-l", "127.0.0.1:0", "-n", strconv.Itoa(n), "--mode", mode, "--ready", "notify", "--demo")
	if err != nil {
		return outcome{err: err}
	}
	defer p.stop(syscall.SIGQUIT)
	st, err := p.allReady(n, 1)
	if err != nil {
		return outcome{err: err}
	}
	stop := make(chan struct{})
	res := make(chan result, 1)
	go func() { res <- runLoad(st.Listeners[0], *clientsFlag, keepAlive, stop) }()
	time.Sleep(300 * time.Millisecond)
	for gen := 2; gen <= *reloadsFlag+1; gen++ {
		p.cmd.Process.Signal(syscall.SIGHUP)
		if _, err := p.allReady(n, gen); err != nil {
			close(stop)
			<-res
			return outcome{err: err}
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	r := <-res
	line := fmt.Sprintf("%7d requests  %4d failed", r.requests, len(r.failed))
	if keepAlive {
		line += fmt.Sprintf("  (%d silent net/http retries)", r.retries)
	}
	if len(r.failed) > 0 {
		line += "  [" + r.errorKinds() + "]"
	}
	return outcome{line: line, bad: len(r.failed) > 0}
}

// kills SIGKILLs a ready worker every --kill-every under mixed load and
// classifies the failed fresh connections by the workers' records.
func kills(mode string) outcome {
	const n = 3
	dir, err := os.MkdirTemp(workDir, "taken.")
	if err != nil {
		return outcome{err: err}
	}
	self, err := os.Executable()
	if err != nil {
		return outcome{err: err}
	}
	p, err := startPrefork([]string{roleEnv + "=ackworker", "RELIABILITY_DIR=" + dir}, nil,
		"-l", "127.0.0.1:0", "-n", strconv.Itoa(n), "--mode", mode, "--ready", "notify",
		"--min-uptime", "50ms", "--max-restarts", "0", "--backoff-min", "10ms", "--backoff-max", "50ms", "--", self)
	if err != nil {
		return outcome{err: err}
	}
	defer p.stop(syscall.SIGQUIT)
	st, err := p.allReady(n, 1)
	if err != nil {
		return outcome{err: err}
	}
	stop := make(chan struct{})
	var churn, ka result
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); churn = runLoad(st.Listeners[0], *clientsFlag, false, stop) }()
	go func() { defer wg.Done(); ka = runLoad(st.Listeners[0], max(*clientsFlag/2, 1), true, stop) }()
	killed := map[int]bool{}
	end := time.Now().Add(*killFor)
	for time.Now().Before(end) {
		time.Sleep(*killEvery)
		if st, ok := p.read(); ok {
			var ready []int
			for _, w := range st.Workers {
				if w.State == "ready" && !killed[w.PID] {
					ready = append(ready, w.PID)
				}
			}
			if len(ready) > 0 {
				pid := ready[rand.IntN(len(ready))]
				syscall.Kill(pid, syscall.SIGKILL)
				killed[pid] = true
			}
		}
	}
	time.Sleep(500 * time.Millisecond) // the last replacement comes up
	close(stop)
	wg.Wait()
	taken, err := readTaken(dir)
	if err != nil {
		return outcome{err: err}
	}
	var byKilled, byLive, never int
	var unrecorded result
	for _, f := range churn.failed {
		switch pid := taken.find(f); {
		case pid == 0:
			never++
			unrecorded.failed = append(unrecorded.failed, f)
		case killed[pid]:
			byKilled++
		default:
			byLive++
		}
	}
	line := fmt.Sprintf("%4d kills; churn %6d requests %4d failed (%d taken by a killed worker, %d by a live one, %d not on record); keep-alive %6d requests %4d failed (%d silent retries)",
		len(killed), churn.requests, len(churn.failed), byKilled, byLive, never, ka.requests, len(ka.failed), ka.retries)
	if all := append(churn.failed, ka.failed...); len(all) > 0 {
		line += "  [" + (result{failed: all}).errorKinds() + "]"
	}
	if never > 0 {
		line += "  [not on record: " + unrecorded.errorKinds() + "]"
	}
	// The target: in rr mode, no connection lost that no worker had acked (the
	// worker records a connection before it acks it, so the record is exact).
	// In the other modes the record is written just after accept returns, so a
	// worker killed in between loses a connection it took without a record.
	// No mode may fail a connection that a live worker took.
	return outcome{line: line, bad: byLive > 0 || (mode == "rr" && never > 0)}
}

// takenRecords maps a client port to the workers' records of it.
type takenRecords map[int][]takenAt

type takenAt struct {
	pid int
	at  time.Time
}

func readTaken(dir string) (takenRecords, error) {
	files, err := filepath.Glob(filepath.Join(dir, "taken.*"))
	if err != nil {
		return nil, err
	}
	t := takenRecords{}
	for _, f := range files {
		pid, _ := strconv.Atoi(strings.TrimPrefix(filepath.Ext(f), "."))
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			var port int
			var ns int64
			if _, err := fmt.Sscan(sc.Text(), &port, &ns); err == nil {
				t[port] = append(t[port], takenAt{pid, time.Unix(0, ns)})
			}
		}
	}
	return t, nil
}

// find returns the worker that took the failed connection, or 0.
func (t takenRecords) find(f failure) int {
	if f.port == 0 {
		return 0
	}
	for _, r := range t[f.port] {
		if !r.at.Before(f.from.Add(-time.Millisecond)) && !r.at.After(f.till.Add(time.Millisecond)) {
			return r.pid
		}
	}
	return 0
}

// orphansAfterKill SIGKILLs prefork and counts what it started that lives on:
// with the demo worker (script empty), or with a shell worker running script.
func orphansAfterKill(mode, script string) outcome {
	const n = 3
	args := []string{"-l", "127.0.0.1:0", "-n", strconv.Itoa(n), "--mode", mode}
	if script == "" {
		args = append(args, "--ready", "notify", "--demo")
	} else {
		args = append(args, "--ready-delay", "300ms", "--", "sh", "-c", script)
	}
	p, err := startPrefork(nil, nil, args...)
	if err != nil {
		return outcome{err: err}
	}
	if _, err := p.allReady(n, 1); err != nil {
		p.stop(syscall.SIGQUIT)
		return outcome{err: err}
	}
	time.Sleep(200 * time.Millisecond)
	before := descendants(p.cmd.Process.Pid)
	p.stop(syscall.SIGKILL)
	time.Sleep(2 * time.Second)
	left := stillAlive(before)
	var names []string
	for _, l := range left {
		names = append(names, fmt.Sprintf("%s[%d]", l.comm, l.pid))
		syscall.Kill(l.pid, syscall.SIGKILL) // clean up what the measurement found
	}
	line := fmt.Sprintf("%d processes under prefork, %d still running 2s after its SIGKILL %v", len(before), len(left), names)
	if script != "" {
		// Only the workers get the parent-death signal; what a worker started
		// itself is orphaned with it. Reported, not a target of prefork's.
		line += "  (known limit: a worker's own children)"
		return outcome{line: line}
	}
	return outcome{line: line, bad: len(left) > 0}
}

// zombies runs prefork as pid 1 of a new pid namespace with workers that leave
// orphans behind (a background child, a double fork, a setsid escapee) and
// restart every 200 ms; it counts zombies that stay unreaped.
func zombies() outcome {
	if os.Geteuid() != 0 {
		return outcome{line: "skipped: needs root for unshare -fp"}
	}
	script := "sleep 0.5 & (sleep 0.6 &); setsid sleep 0.7 & sleep 0.2"
	p, err := startPrefork(nil, []string{"unshare", "-fp", "--mount-proc"}, "-l", "127.0.0.1:0", "-n", "2",
		"--ready-delay", "50ms", "--min-uptime", "50ms", "--max-restarts", "0", "--grace", "5s", "--", "sh", "-c", script)
	if err != nil {
		return outcome{err: err}
	}
	defer p.stop(syscall.SIGKILL)
	if _, err := p.waitFor("workers", 30*time.Second, func(st statusFile) bool { return len(st.Workers) == 2 }); err != nil {
		return outcome{err: err}
	}
	// A zombie seen twice 600 ms apart is not being reaped.
	seen := map[proc]time.Time{}
	stuck := map[proc]string{}
	var samples, maxZ int
	for end := time.Now().Add(6 * time.Second); time.Now().Before(end); time.Sleep(150 * time.Millisecond) {
		samples++
		z := 0
		for _, d := range descendants(p.cmd.Process.Pid) {
			if d.state != 'Z' {
				continue
			}
			z++
			if first, ok := seen[d.proc]; !ok {
				seen[d.proc] = time.Now()
			} else if time.Since(first) > 600*time.Millisecond {
				stuck[d.proc] = d.comm
			}
		}
		maxZ = max(maxZ, z)
	}
	restarts := strings.Count(p.output(), "restarting")
	var inner int
	for _, d := range descendants(p.cmd.Process.Pid) {
		if d.ppid == p.cmd.Process.Pid {
			inner = d.pid // prefork, pid 1 inside
		}
	}
	start := time.Now()
	syscall.Kill(inner, syscall.SIGTERM)
	code := -1
	select {
	case <-p.done:
		code = p.cmd.ProcessState.ExitCode()
	case <-time.After(30 * time.Second):
	}
	line := fmt.Sprintf("%d samples, %d worker restarts, at most %d zombies at once (transient), %d never reaped; TERM: exit %d after %v",
		samples, restarts, maxZ, len(stuck), code, time.Since(start).Round(10*time.Millisecond))
	return outcome{line: line, bad: len(stuck) > 0 || code != 0}
}

// repoRoot is prefork's own module, the directory above the working directory
// that holds prefork.go (the suite is a module of its own, run from its
// directory or from the repository's root).
func repoRoot() string {
	dir, err := os.Getwd()
	if err != nil {
		fatal(err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "prefork.go")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			fatal(fmt.Errorf("prefork.go not found above %s", dir))
		}
	}
}
