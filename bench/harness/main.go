//go:build unix

// Command harness runs prefork's benchmarks (bench/run.sh builds and calls
// it): the contenders side by side, interleaved and repeated, on loopback only,
// with every run bounded in time; it writes every figure to one JSON file that
// bench/report turns into docs/benchmarks.md and docs/benchmarks.svg.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
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
	port                     = 18100 + os.Getpid()%2000*10
)

func binPath(name string) string { return filepath.Join(binDir, name) }

// nextPort is a fresh loopback port for every start, so that no contender
// meets its predecessor's TIME_WAIT sockets.
func nextPort() int { port++; return port }

func main() {
	smoke := flag.Bool("smoke", false, "tiny durations, one repetition")
	reps := flag.Int("reps", 3, "repetitions of every measurement")
	dur := flag.Duration("d", 5*time.Second, "duration of each wrk run")
	distDur := flag.Duration("dist-d", 2*time.Second, "duration of each per-worker count run")
	warm := flag.Duration("warm", time.Second, "warm-up before measuring")
	conns := flag.Int("c", 16, "connections")
	out := flag.String("o", "", "results JSON")
	command := flag.String("command", "bench/run.sh", "the command line, for the report")
	flag.StringVar(&benchDir, "bench", "bench", "the bench directory")
	flag.StringVar(&binDir, "bin", "bench/out/bin", "built binaries")
	flag.StringVar(&outDir, "out", "bench/out", "scratch directory")
	flag.StringVar(&wrkPath, "wrk", "wrk", "wrk")
	flag.StringVar(&nodePath, "node", "node", "node")
	flag.StringVar(&pm2Path, "pm2", "", "pm2 (empty: skip PM2)")
	flag.StringVar(&pm2Home, "pm2-home", "", "PM2_HOME")
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
	err := run(res, *reps, *dur, *distDur, *warm, *conns, *smoke)
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

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "harness: "+format+"\n", a...)
}

func run(res *results.Results, reps int, dur, distDur, warm time.Duration, conns int, smoke bool) error {
	rrPending = probeRR()
	if rrPending != "" {
		logf("prefork rr: %s", rrPending)
		res.Notes = append(res.Notes, "prefork rr: "+rrPending)
	}
	if pm2Pending != "" {
		logf("pm2: %s", pm2Pending)
		res.Notes = append(res.Notes, "PM2: "+pm2Pending)
	}
	cs := contenders()
	rows := make([]results.Row, len(cs))
	dists := make([][2]results.Dist, len(cs))
	for i, c := range cs {
		rows[i] = results.Row{Group: c.group, Name: c.name, Pending: c.pending}
		dists[i] = [2]results.Dist{{Group: c.group, Name: c.name, Load: "full"}, {Group: c.group, Name: c.name, Load: "half"}}
	}
	afterLoad := map[string][]float64{}

	for rep := 0; rep < reps; rep++ {
		// Interleave: every repetition visits every contender, starting
		// one further along, so that drift on a shared machine spreads evenly.
		for k := range cs {
			i := (k + rep) % len(cs)
			c := cs[i]
			if c.pending != "" {
				continue
			}
			label := c.group + " / " + c.name
			p, err := c.start(nextPortFor())
			if err != nil {
				return fmt.Errorf("%s: %w", label, err)
			}
			port := lastPort
			if warm > 0 {
				runWrk(port, conns, warm, false)
			}
			ka, err := runWrk(port, conns, dur, false)
			if err != nil {
				p.Stop()
				return fmt.Errorf("%s keep-alive: %w", label, err)
			}
			cl, err := runWrk(port, conns, dur, true)
			if err != nil {
				p.Stop()
				return fmt.Errorf("%s Connection: close: %w", label, err)
			}
			full, err := runLoad(port, conns, distDur, 0, true)
			if err != nil {
				p.Stop()
				return fmt.Errorf("%s per-worker counts: %w", label, err)
			}
			half, err := runLoad(port, conns, distDur, full.RPS/2, true)
			if err != nil {
				p.Stop()
				return fmt.Errorf("%s per-worker counts at half load: %w", label, err)
			}
			if c.prefork {
				if kib, err := rssKiB(p.cmd.Process.Pid); err == nil {
					afterLoad[c.group+" / "+c.name] = append(afterLoad[c.group+" / "+c.name], kib)
				}
			}
			p.Stop()
			logf("rep %d %-26s keep-alive %8.0f req/s p99 %6.2f ms | close %8.0f req/s p99 %6.2f ms | counts full %v half %v",
				rep+1, label, ka.RPS, ka.P99ms, cl.RPS, cl.P99ms, counts(full.PerPid, workers), counts(half.PerPid, workers))
			for _, x := range []struct {
				what string
				rps  float64
			}{{"keep-alive", ka.RPS}, {"Connection: close", cl.RPS}, {"load client full", full.RPS}, {"load client half", half.RPS}} {
				if x.rps <= 0 {
					return fmt.Errorf("%s gave 0 req/s (%s)", label, x.what)
				}
			}
			if ka.Errors+cl.Errors > 0 {
				res.Notes = append(res.Notes, fmt.Sprintf("%s, rep %d: wrk counted %d socket errors or non-2xx answers", label, rep+1, ka.Errors+cl.Errors))
			}
			r := &rows[i]
			r.KARPS, r.KAP99 = append(r.KARPS, ka.RPS), append(r.KAP99, ka.P99ms)
			r.CloseRPS, r.CloseP99 = append(r.CloseRPS, cl.RPS), append(r.CloseP99, cl.P99ms)
			for j, l := range []loadResult{full, half} {
				d := &dists[i][j]
				d.RPS = append(d.RPS, l.RPS)
				d.Counts = append(d.Counts, counts(l.PerPid, workers))
			}
		}
	}
	res.Throughput = rows
	for _, d := range dists {
		res.Distribution = append(res.Distribution, d[0], d[1])
	}
	for _, c := range cs {
		if kib := afterLoad[c.group+" / "+c.name]; len(kib) > 0 {
			res.Memory = append(res.Memory, results.Mem{Name: fmt.Sprintf("prefork --mode %s, 2 %s workers, after load", strings.TrimPrefix(c.name, "prefork "), c.group), KiB: kib})
		}
	}

	logf("memory")
	if err := memory(res, reps); err != nil {
		return err
	}
	modes := []string{"shared", "reuseport"}
	if rrPending == "" {
		modes = append(modes, "rr")
	}
	logf("startup of 64 workers")
	if err := startup(res, reps, 64, modes[:1]); err != nil {
		return err
	}
	kills := 3 * reps
	if smoke {
		kills = 2
	}
	logf("restart after SIGKILL")
	return restart(res, kills, modes)
}

var lastPort int

func nextPortFor() int { lastPort = nextPort(); return lastPort }

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
