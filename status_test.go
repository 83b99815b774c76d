//go:build linux || darwin

// This file tests status.go's metrics: a strict parser of the Prometheus text
// exposition format (0.0.4) that every metrics test runs prefork's output
// through, tests of the writer on its own, and the metrics a running prefork
// serves on the control socket and writes to --metrics-file.
package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prefork/prefork/internal/rr"
)

// promSample is one parsed sample.
type promSample struct {
	name   string
	labels map[string]string
	value  float64
}

var (
	promMetricName = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	promLabelName  = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
)

// parseProm parses text strictly: every line is blank, a comment, or
// `name{labels} value`; names and label names are valid; label values use only
// the three escapes; a family has at most one HELP and one TYPE, TYPE comes
// before its samples, and its samples are not split by another family's; no
// series appears twice; counters are named *_total and never negative; the
// text ends with a newline.
func parseProm(text string) (map[string][]promSample, map[string]string, error) {
	if text != "" && !strings.HasSuffix(text, "\n") {
		return nil, nil, fmt.Errorf("does not end with a newline")
	}
	samples := map[string][]promSample{}
	types := map[string]string{}
	helps := map[string]bool{}
	seen := map[string]bool{}
	closed := map[string]bool{} // families whose samples are over
	current := ""
	for i, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		n := i + 1
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "#") {
			f := strings.SplitN(line, " ", 4)
			if len(f) < 2 || (f[1] != "HELP" && f[1] != "TYPE") {
				continue // a plain comment
			}
			if len(f) < 3 || !promMetricName.MatchString(f[2]) {
				return nil, nil, fmt.Errorf("line %d: bad metric name in %q", n, line)
			}
			name := f[2]
			if len(samples[name]) > 0 {
				return nil, nil, fmt.Errorf("line %d: %s for %s after its samples", n, f[1], name)
			}
			switch f[1] {
			case "HELP":
				if helps[name] {
					return nil, nil, fmt.Errorf("line %d: second HELP for %s", n, name)
				}
				helps[name] = true
				if len(f) == 4 {
					if err := checkEscapes(f[3], false); err != nil {
						return nil, nil, fmt.Errorf("line %d: HELP: %v", n, err)
					}
				}
			case "TYPE":
				if _, ok := types[name]; ok {
					return nil, nil, fmt.Errorf("line %d: second TYPE for %s", n, name)
				}
				if len(f) != 4 {
					return nil, nil, fmt.Errorf("line %d: TYPE without a type", n)
				}
				switch f[3] {
				case "counter", "gauge", "untyped", "histogram", "summary":
				default:
					return nil, nil, fmt.Errorf("line %d: unknown type %q", n, f[3])
				}
				types[name] = f[3]
			}
			continue
		}
		s, err := parsePromSample(line)
		if err != nil {
			return nil, nil, fmt.Errorf("line %d: %v: %q", n, err, line)
		}
		typ, ok := types[s.name]
		if !ok {
			return nil, nil, fmt.Errorf("line %d: sample of %s before (or without) its TYPE", n, s.name)
		}
		if s.name != current {
			if closed[s.name] {
				return nil, nil, fmt.Errorf("line %d: samples of %s are split", n, s.name)
			}
			if current != "" {
				closed[current] = true
			}
			current = s.name
		}
		if typ == "counter" {
			if !strings.HasSuffix(s.name, "_total") {
				return nil, nil, fmt.Errorf("line %d: counter %s is not named *_total", n, s.name)
			}
			if s.value < 0 || math.IsNaN(s.value) {
				return nil, nil, fmt.Errorf("line %d: counter %s is %v", n, s.name, s.value)
			}
		}
		key := seriesKey(s)
		if seen[key] {
			return nil, nil, fmt.Errorf("line %d: duplicate series %s", n, key)
		}
		seen[key] = true
		samples[s.name] = append(samples[s.name], s)
	}
	return samples, types, nil
}

func parsePromSample(line string) (promSample, error) {
	s := promSample{labels: map[string]string{}}
	i := strings.IndexAny(line, "{ ")
	if i < 0 {
		return s, fmt.Errorf("no value")
	}
	s.name = line[:i]
	if !promMetricName.MatchString(s.name) {
		return s, fmt.Errorf("bad metric name %q", s.name)
	}
	rest := line[i:]
	if rest[0] == '{' {
		rest = rest[1:]
		for {
			if strings.HasPrefix(rest, "}") {
				rest = rest[1:]
				break
			}
			eq := strings.Index(rest, `="`)
			if eq < 0 {
				return s, fmt.Errorf("label without =\"")
			}
			lname := rest[:eq]
			if !promLabelName.MatchString(lname) || strings.HasPrefix(lname, "__") {
				return s, fmt.Errorf("bad label name %q", lname)
			}
			if _, dup := s.labels[lname]; dup {
				return s, fmt.Errorf("label %s twice", lname)
			}
			rest = rest[eq+2:]
			var val strings.Builder
			closedQuote := false
			for j := 0; j < len(rest); j++ {
				c := rest[j]
				if c == '\\' {
					if j+1 >= len(rest) {
						return s, fmt.Errorf("escape at the end")
					}
					switch rest[j+1] {
					case '\\':
						val.WriteByte('\\')
					case '"':
						val.WriteByte('"')
					case 'n':
						val.WriteByte('\n')
					default:
						return s, fmt.Errorf("unknown escape \\%c", rest[j+1])
					}
					j++
					continue
				}
				if c == '\n' {
					return s, fmt.Errorf("raw newline in a label value")
				}
				if c == '"' {
					rest, closedQuote = rest[j+1:], true
					break
				}
				val.WriteByte(c)
			}
			if !closedQuote {
				return s, fmt.Errorf("unterminated label value")
			}
			s.labels[lname] = val.String()
			switch {
			case strings.HasPrefix(rest, ","):
				rest = rest[1:]
			case strings.HasPrefix(rest, "}"):
			default:
				return s, fmt.Errorf("expected , or } after label %s", lname)
			}
		}
	}
	if !strings.HasPrefix(rest, " ") {
		return s, fmt.Errorf("no space before the value")
	}
	f := strings.Split(rest[1:], " ")
	if len(f) < 1 || len(f) > 2 {
		return s, fmt.Errorf("expected a value and an optional timestamp")
	}
	switch f[0] {
	case "NaN":
		s.value = math.NaN()
	case "+Inf":
		s.value = math.Inf(1)
	case "-Inf":
		s.value = math.Inf(-1)
	default:
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil || strings.ContainsAny(f[0], "_xXpP") {
			return s, fmt.Errorf("bad value %q", f[0])
		}
		s.value = v
	}
	if len(f) == 2 {
		if _, err := strconv.ParseInt(f[1], 10, 64); err != nil {
			return s, fmt.Errorf("bad timestamp %q", f[1])
		}
	}
	return s, nil
}

// checkEscapes accepts only \\ and \n (and \" in label values).
func checkEscapes(v string, quotes bool) error {
	for j := 0; j < len(v); j++ {
		if v[j] != '\\' {
			continue
		}
		if j+1 >= len(v) {
			return fmt.Errorf("escape at the end")
		}
		switch v[j+1] {
		case '\\', 'n':
		case '"':
			if !quotes {
				return fmt.Errorf("\\\" outside a label value")
			}
		default:
			return fmt.Errorf("unknown escape \\%c", v[j+1])
		}
		j++
	}
	return nil
}

func seriesKey(s promSample) string {
	keys := make([]string, 0, len(s.labels))
	for k, v := range s.labels {
		keys = append(keys, k+"="+strconv.Quote(v))
	}
	sort.Strings(keys)
	return s.name + "{" + strings.Join(keys, ",") + "}"
}

// promValue returns the one sample of name whose labels include want.
func promValue(t *testing.T, samples map[string][]promSample, name string, want ...string) float64 {
	t.Helper()
	var found []float64
	for _, s := range samples[name] {
		ok := true
		for i := 0; i+1 < len(want); i += 2 {
			ok = ok && s.labels[want[i]] == want[i+1]
		}
		if ok {
			found = append(found, s.value)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s%v: %d samples, want 1", name, want, len(found))
	}
	return found[0]
}

func TestStrictParserRejects(t *testing.T) {
	bad := []string{
		"a 1\n",               // no TYPE
		"# TYPE a gauge\na 1", // no final newline
		"# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n",    // duplicate series
		"# TYPE a gauge\na{x=\"\\t\"} 1\n",                // bad escape
		"# TYPE a gauge\na{x=1} 1\n",                      // unquoted
		"# TYPE a gauge\na{1x=\"1\"} 1\n",                 // bad label name
		"# TYPE a gauge\na one\n",                         // bad value
		"# TYPE a counter\na 1\n",                         // counter not *_total
		"# TYPE a_total counter\na_total -1\n",            // negative counter
		"# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na 2\n", // split family
		"# TYPE a gauge\na 1\n# HELP a late\n",            // HELP after samples
		"# TYPE 1a gauge\n",                               // bad name
		"# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n",          // label twice
	}
	for _, b := range bad {
		if _, _, err := parseProm(b); err == nil {
			t.Errorf("accepted %q", b)
		}
	}
	if _, _, err := parseProm("# HELP a x \\\\ y\n# TYPE a gauge\na{x=\"q\\\"\\n\\\\\"} 1.5e+09\n"); err != nil {
		t.Errorf("rejected valid text: %v", err)
	}
}

func TestRenderMetricsEscapesAndParses(t *testing.T) {
	rss, cpu, inflight := int64(5<<20), 1.25, 2
	st := &ctlStatus{statusFile: statusFile{PID: 42, Mode: "rr", Generation: 3},
		Workers: []ctlWorker{
			{workerStatus: workerStatus{Slot: 0, PID: 100, Generation: 3, State: "ready", Started: time.Unix(1700000000, 0)},
				RSS: &rss, CPU: &cpu, RRInflight: &inflight},
			{workerStatus: workerStatus{Slot: 0, PID: 99, Generation: 2, State: "stopping", Started: time.Unix(1600000000, 0)}},
		},
		Reloads: 2, ReloadFailures: 1, RR: &rr.Totals{Handed: 10, Acked: 9, Redistributed: 1},
		Queues: []ctlQueue{{Listener: "we\"ird\\name\n", Addr: "[::]:80", Length: 3}},
		slots:  []slotCount{{0, 4}}}
	samples, _, err := parseProm(string(renderMetrics(st)))
	if err != nil {
		t.Fatalf("%v\n%s", err, renderMetrics(st))
	}
	if v := promValue(t, samples, "prefork_listen_queue_length", "listener", "we\"ird\\name\n"); v != 3 {
		t.Errorf("queue length %v, want 3", v)
	}
	if v := promValue(t, samples, "prefork_workers", "state", "stopping"); v != 1 {
		t.Errorf("stopping workers %v, want 1", v)
	}
	if v := promValue(t, samples, "prefork_worker_cpu_seconds_total", "pid", "100"); v != 1.25 {
		t.Errorf("cpu %v, want 1.25", v)
	}
	if v := promValue(t, samples, "prefork_reload_failures_total"); v != 1 {
		t.Errorf("reload failures %v, want 1", v)
	}
}

func init() {
	extraRoles["rrhold"] = rrHoldWorker
}

// rrHoldWorker in slot 0 takes rr connections and never acks them (it never
// reads its channel); in any other slot it is the ordinary HTTP worker.
func rrHoldWorker() int {
	if os.Getenv("PREFORK_WORKER") == "0" {
		time.Sleep(time.Minute)
		return 0
	}
	return testWorker("http")
}

// mustProm asks the control socket for the metrics and parses them strictly.
func mustProm(t *testing.T, sock string) map[string][]promSample {
	t.Helper()
	samples, _, err := parseProm(mustCtl(t, sock, "metrics"))
	if err != nil {
		t.Fatal(err)
	}
	return samples
}

func TestMetricsFile(t *testing.T) {
	mf := filepath.Join(t.TempDir(), "prefork.prom")
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "2", "--metrics-file", mf)
	in.readyWorkers(2, 10*time.Second)
	deadline := time.Now().Add(metricsInterval + 5*time.Second)
	for {
		b, err := os.ReadFile(mf)
		if err == nil {
			samples, _, perr := parseProm(string(b))
			if perr != nil {
				t.Fatalf("metrics file: %v\n%s", perr, b)
			}
			if len(samples["prefork_workers"]) == 3 && promValue(t, samples, "prefork_workers", "state", "ready") == 2 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the metrics file never showed 2 ready workers (last read: %v)", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if fi, err := os.Stat(mf); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("metrics file mode: %v %v, want 0644 (node_exporter reads it)", fi, err)
	}
	in.signal(syscall.SIGTERM)
	in.wait(10 * time.Second)
	if _, err := os.Stat(mf); err == nil {
		t.Error("the metrics file outlived prefork")
	}
}

func TestControlMetricsRR(t *testing.T) {
	sock := ctlSock(t)
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "2", "--mode", "rr", "--control", sock)
	in.readyWorkers(2, 10*time.Second)
	addr := in.addr()
	for i := 0; i < 20; i++ {
		if _, err := get(addr); err != nil {
			t.Fatal(err)
		}
	}
	// A worker's last ack may still be on its way to prefork.
	deadline := time.Now().Add(5 * time.Second)
	samples := mustProm(t, sock)
	for promValue(t, samples, "prefork_rr_connections_acked_total") < 20 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		samples = mustProm(t, sock)
	}
	if v := promValue(t, samples, "prefork_rr_connections_handed_total"); v < 20 {
		t.Errorf("handed %v, want at least 20", v)
	}
	if v := promValue(t, samples, "prefork_rr_connections_acked_total"); v < 20 {
		t.Errorf("acked %v, want at least 20", v)
	}
	if n := len(samples["prefork_rr_connections_inflight"]); n != 2 {
		t.Errorf("%d in-flight samples, want one per worker", n)
	}
	if out := mustCtl(t, sock, "status"); !strings.Contains(out, "RR HANDED/INFLIGHT/ACKED") {
		t.Errorf("the rr status table has no rr column:\n%s", out)
	}
}

// rr: connections a worker held unacked when it died go to another worker, and
// the metrics count them as redistributed.
func TestControlMetricsRedistributed(t *testing.T) {
	sock := ctlSock(t)
	in := startPrefork(t, "rrhold", nil, "-l", "127.0.0.1:0", "-n", "2", "--mode", "rr",
		"--ready", "delay", "--ready-delay", "300ms", "--control", sock)
	st := in.readyWorkers(2, 10*time.Second)
	addr := in.addr()
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		go func() { _, err := get(addr); errs <- err }()
	}
	holder := st.Workers[0].PID
	deadline := time.Now().Add(5 * time.Second)
	for promValue(t, mustProm(t, sock), "prefork_rr_connections_inflight", "pid", strconv.Itoa(holder)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("slot 0 never held a connection")
		}
		time.Sleep(20 * time.Millisecond)
	}
	syscall.Kill(holder, syscall.SIGKILL)
	for i := 0; i < 4; i++ {
		if err := <-errs; err != nil {
			t.Errorf("request %d: %v (a connection the dead worker held was lost)", i, err)
		}
	}
	if v := promValue(t, mustProm(t, sock), "prefork_rr_connections_redistributed_total"); v < 1 {
		t.Errorf("redistributed %v, want at least 1", v)
	}
}
