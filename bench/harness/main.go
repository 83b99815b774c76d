//go:build unix

// Command harness runs prefork's benchmarks (bench/run.sh builds and calls
// it): the contenders side by side, interleaved and repeated, on loopback only,
// with every run bounded in time; it writes every figure to one JSON file that
// bench/report turns into docs/benchmarks.md and docs/benchmarks.svg.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prefork/prefork/bench/internal/results"
)

var (
	benchDir, binDir, outDir string
	wrkPath, nodePath        string
	pm2Path, pm2Home         string
	port                     = 20000 + os.Getpid()%600*20 // below the ephemeral range (32768-)
)

func binPath(name string) string { return filepath.Join(binDir, name) }

// nextPort is a fresh loopback port for every start, so that no contender
// meets its predecessor's TIME_WAIT sockets; it skips ports someone holds.
func nextPort() int {
	for range 100 {
		port++
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			l.Close()
			return port
		}
	}
	return port
}

func main() {
	smoke := flag.Bool("smoke", false, "tiny durations, one repetition")
	reps := flag.Int("rounds", 5, "rounds of interleaved wrk runs (the other measurements repeat min(rounds, 3) times)")
	dur := flag.Duration("d", 3*time.Second, "duration of each wrk run")
	distDur := flag.Duration("dist-d", 2*time.Second, "duration of each per-worker count run")
	warm := flag.Duration("warm", time.Second, "warm-up before measuring")
	conns := flag.Int("c", 16, "connections")
	out := flag.String("o", "", "results JSON")
	only := flag.String("only", "", "run one part only: pool (the elastic pool's step load)")
	command := flag.String("command", "bench/run.sh", "the command line, for the report")
	flag.StringVar(&benchDir, "bench", "bench", "the bench directory")
	flag.StringVar(&binDir, "bin", "bench/out/bin", "built binaries")
	flag.StringVar(&outDir, "out", "bench/out", "scratch directory")
	flag.StringVar(&wrkPath, "wrk", "wrk", "wrk")
	flag.StringVar(&nodePath, "node", "node", "node")
	flag.StringVar(&pm2Path, "pm2", "", "pm2 (empty: skip PM2)")
	flag.StringVar(&pm2Home, "pm2-home", "", "PM2_HOME")
	groups := flag.String("groups", "node,go,c", "throughput tables to run, comma-separated")
	flag.StringVar(&beforeBin, "before", "", "an earlier prefork binary to measure in rr mode beside this one")
	life := flag.Bool("life", true, "measure memory, startup and restart after throughput")
	flag.StringVar(&onlyGroup, "group", "", "measure only this group's throughput (node or go), nothing else")
	flag.StringVar(&onlyNames, "contenders", "", "with -group: only these contenders (comma-separated names)")
	flag.Parse()
	if *smoke {
		*reps, *dur, *distDur, *warm = 1, time.Second, 300*time.Millisecond, 0
	}
	if *out == "" {
		*out = filepath.Join(outDir, "results.json")
	}
	if wrkPath == "" {
		logf("wrk is missing: bench/load measures requests/s and p99 instead")
	}
	if pm2Path == "" {
		pm2Pending = "skipped: pm2 is not installed (see the run.sh output)"
	}
	if beforeBin == "" {
		beforePending = "skipped: no -before binary"
	}
	if _, err := os.Stat(binPath("cworker")); err != nil {
		cPending = "skipped: bench/cworker was not built (no C compiler?)"
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		fmt.Fprintln(os.Stderr, "harness: interrupted, stopping everything it started")
		stopAll()
		pm2Kill()
		os.Exit(130)
	}()

	res := &results.Results{Command: *command, Smoke: *smoke, Reps: *reps, Duration: dur.String(), Machine: machine()}
	if wrkPath == "" {
		res.Notes = append(res.Notes, "wrk was not installed: bench/load measured requests/s and p99 (a slower client; ratios still compare)")
	}
	var err error
	switch *only {
	case "":
		err = run(res, strings.Split(*groups, ","), *life, *reps, *dur, *distDur, *warm, *conns, *smoke)
	case "pool":
		err = poolBench(res, min(*reps, 3), *smoke)
	default:
		err = fmt.Errorf("-only %q: the only part is pool", *only)
	}
	stopAll()
	pm2Kill()
	if err != nil {
		fmt.Fprintf(os.Stderr, "harness: FAILED: %v\n", err)
		os.Exit(1)
	}
	if err := res.Save(*out); err != nil {
		fmt.Fprintf(os.Stderr, "harness: %v\n", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "harness: results in %s\n", *out)
}

var began = time.Now()

// onlyGroup is -group: a quick run of one table (bench/run.sh never sets it).
var onlyGroup string

// onlyNames is -contenders: with -group, the contenders to run ("" = all).
var onlyNames string

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "harness: %5.1fs "+format+"\n", append([]any{time.Since(began).Seconds()}, a...)...)
}

func run(res *results.Results, groups []string, life bool, rounds int, dur, distDur, warm time.Duration, conns int, smoke bool) error {
	rrPending = probeRR()
	if rrPending != "" {
		logf("prefork rr: %s", rrPending)
		res.Notes = append(res.Notes, "prefork rr: "+rrPending)
	}
	if pm2Pending != "" {
		logf("pm2: %s", pm2Pending)
		res.Notes = append(res.Notes, "PM2: "+pm2Pending)
	}
	if cPending != "" {
		logf("c: %s", cPending)
		res.Notes = append(res.Notes, "C server: "+cPending)
	}
	distReps := min(rounds, 3)
	if onlyGroup != "" {
		return throughput(res, onlyGroup, rounds, distReps, dur, distDur, warm, conns)
	}
	for _, group := range groups {
		if group == "" {
			continue
		}
		if err := throughput(res, group, rounds, distReps, dur, distDur, warm, conns); err != nil {
			return err
		}
	}
	if !life {
		return nil
	}

	logf("memory")
	if err := memory(res, distReps); err != nil {
		return err
	}
	modes := []string{"shared", "reuseport"}
	if rrPending == "" {
		modes = append(modes, "rr")
	}
	n := 64
	if smoke {
		n = 16 // the same code path, a quarter of the time
	}
	logf("startup of %d workers", n)
	if err := startup(res, distReps, n, modes); err != nil {
		return err
	}
	many := 1024
	if smoke {
		many = 64
	}
	logf("startup of %d sleep workers", many)
	if err := spawnMany(res, distReps, many); err != nil {
		return err
	}
	kills := 3 * distReps
	if smoke {
		kills = 2
	}
	logf("restart after SIGKILL")
	if err := restart(res, kills, modes); err != nil {
		return err
	}
	logf("elastic pool under a step load")
	return poolBench(res, distReps, smoke)
}

// running is one started contender and the port it answers on.
type running struct {
	contender
	p    *proc
	port int
}

// throughput starts every contender of a group side by side on ports of
// their own (idle ones cost next to nothing) and interleaves short wrk runs
// between them, round after round, so that each round compares contenders
// measured seconds apart: the report divides within a round, then takes the
// median over the rounds. The per-worker counts come after, also interleaved.
func throughput(res *results.Results, group string, rounds, distReps int, dur, distDur, warm time.Duration, conns int) error {
	var rs []*running
	defer func() {
		for _, r := range rs {
			if r.prefork {
				if kib, err := rssKiB(r.p.cmd.Process.Pid); err == nil {
					res.Memory = append(res.Memory, results.Mem{
						Name: fmt.Sprintf("prefork --mode %s, 2 %s workers, after load", strings.TrimPrefix(r.name, "prefork "), group),
						KiB:  []float64{kib}})
				}
			}
			r.p.Stop()
		}
	}()
	row := map[string]*results.Row{}
	dist := map[string]*[2]results.Dist{}
	var order []string
	for _, c := range contenders() {
		if c.group != group || onlyNames != "" && !slices.Contains(strings.Split(onlyNames, ","), c.name) {
			continue
		}
		order = append(order, c.name)
		row[c.name] = &results.Row{Group: group, Name: c.name, Pending: c.pending}
		dist[c.name] = &[2]results.Dist{{Group: group, Name: c.name, Load: "full"}, {Group: group, Name: c.name, Load: "half"}}
		if c.pending != "" {
			continue
		}
		port := nextPort()
		logf("starting %s / %s on 127.0.0.1:%d", group, c.name, port)
		p, err := c.start(port)
		if err != nil {
			return fmt.Errorf("%s / %s: %w", group, c.name, err)
		}
		rs = append(rs, &running{c, p, port})
	}
	defer func() {
		for _, name := range order {
			res.Throughput = append(res.Throughput, *row[name])
			d := dist[name]
			res.Distribution = append(res.Distribution, d[0], d[1])
		}
	}()
	if warm > 0 {
		for _, r := range rs {
			runWrk(r.port, conns, warm, false)
			runWrk(r.port, conns, warm, true)
		}
	}
	check := func(r *running, what string, rps float64) error {
		if rps <= 0 {
			return fmt.Errorf("%s / %s gave 0 req/s (%s)", group, r.name, what)
		}
		if r.p.exited() {
			return fmt.Errorf("%s / %s exited during the run: %s", group, r.name, lastLines(r.p.stderr.String(), 5))
		}
		return nil
	}
	for round := 0; round < rounds; round++ {
		for _, closeConn := range []bool{false, true} {
			what := map[bool]string{false: "keep-alive", true: "Connection: close"}[closeConn]
			// Rotate the order every round, so no contender always follows
			// the same one.
			for k := range rs {
				r := rs[(k+round)%len(rs)]
				cpu0 := masterCPU(r)
				w, err := runWrk(r.port, conns, dur, closeConn)
				cpu := masterCPU(r) - cpu0
				if err != nil {
					return fmt.Errorf("%s / %s %s: %w", group, r.name, what, err)
				}
				if err := check(r, what, w.RPS); err != nil {
					return err
				}
				if w.Errors > 0 {
					res.Notes = append(res.Notes, fmt.Sprintf("%s / %s, round %d, %s: wrk counted %d socket errors or non-2xx answers", group, r.name, round+1, what, w.Errors))
				}
				t := row[r.name]
				us := 0.0
				if w.Requests > 0 {
					us = cpu.Seconds() * 1e6 / float64(w.Requests)
				}
				if closeConn {
					t.CloseRPS, t.CloseP99 = append(t.CloseRPS, w.RPS), append(t.CloseP99, w.P99ms)
				} else {
					t.KARPS, t.KAP99 = append(t.KARPS, w.RPS), append(t.KAP99, w.P99ms)
				}
				if r.master && closeConn {
					t.CloseCPU = append(t.CloseCPU, us)
				} else if r.master {
					t.KACPU = append(t.KACPU, us)
				}
				logf("round %d %-4s %-20s %-17s %8.0f req/s p99 %7.2f ms%s", round+1, group, r.name, what, w.RPS, w.P99ms,
					map[bool]string{true: fmt.Sprintf(" master %5.1f µs/req", us)}[r.master])
			}
		}
	}
	for rep := 0; rep < distReps; rep++ {
		for k := range rs {
			r := rs[(k+rep)%len(rs)]
			full, err := runLoad(r.port, conns, distDur, 0, true)
			if err != nil {
				return fmt.Errorf("%s / %s per-worker counts: %w", group, r.name, err)
			}
			if err := check(r, "load client, full", full.RPS); err != nil {
				return err
			}
			half, err := runLoad(r.port, conns, distDur, full.RPS/2, true)
			if err != nil {
				return fmt.Errorf("%s / %s per-worker counts at half load: %w", group, r.name, err)
			}
			if err := check(r, "load client, half", half.RPS); err != nil {
				return err
			}
			for j, l := range []loadResult{full, half} {
				d := &dist[r.name][j]
				d.RPS = append(d.RPS, l.RPS)
				d.Counts = append(d.Counts, counts(l.PerPid, workers))
			}
			logf("counts %-4s %-20s full %v half %v", group, r.name, counts(full.PerPid, workers), counts(half.PerPid, workers))
		}
	}
	return nil
}

// machine describes where the run happens.
func machine() results.Machine {
	m := results.Machine{Nproc: runtime.NumCPU(), Date: time.Now().UTC().Format("2006-01-02 15:04 MST"), Go: runtime.Version()}
	if b, err := exec.Command("nproc").Output(); err == nil {
		m.Nproc, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if m.CPU == "" {
		m.CPU = runtime.GOARCH
	}
	m.Kernel = cmdOut("uname", "-sr")
	m.Node = cmdOut(nodePath, "--version")
	if wrkPath != "" {
		m.Wrk = firstLine(cmdOut(wrkPath, "-v"), 40)
	}
	if pm2Path != "" {
		c := exec.Command(pm2Path, "--version")
		c.Env = append(os.Environ(), "PM2_HOME="+pm2Home)
		b, _ := c.Output()
		m.PM2 = lastLines(string(b), 1)
	}
	m.Prefork = cmdOut("git", "describe", "--always", "--dirty")
	return m
}

func cmdOut(argv ...string) string {
	b, _ := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	return strings.TrimSpace(string(b))
}
