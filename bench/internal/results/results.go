// Package results holds the figures the benchmark harness measures and the
// report renders: one JSON file, with every repetition kept, and the
// statistics both sides need (median, max/min, Jain's fairness index).
package results

import (
	"encoding/json"
	"os"
	"slices"
)

// Results is one run of bench/run.sh.
type Results struct {
	Machine      Machine   `json:"machine"`
	Command      string    `json:"command"`
	Smoke        bool      `json:"smoke"`
	Reps         int       `json:"reps"`
	Duration     string    `json:"duration"` // of each wrk run
	Throughput   []Row     `json:"throughput"`
	Distribution []Dist    `json:"distribution"`
	Memory       []Mem     `json:"memory"`
	Lifecycle    []Life    `json:"lifecycle"`
	Pool         []PoolRow `json:"pool"`
	PoolLoad     string    `json:"pool_load"` // what the pool rows measured
	Notes        []string  `json:"notes"`
}

// Machine is where the run happened.
type Machine struct {
	Nproc   int    `json:"nproc"`
	CPU     string `json:"cpu"`
	Kernel  string `json:"kernel"`
	Date    string `json:"date"`
	Go      string `json:"go"`
	Node    string `json:"node"`
	Wrk     string `json:"wrk"`
	PM2     string `json:"pm2"`
	Prefork string `json:"prefork"` // git describe of the tree measured
}

// Row is one contender's wrk figures, one value per repetition.
type Row struct {
	Group    string    `json:"group"` // "node", "go" or "c"
	Name     string    `json:"name"`
	Pending  string    `json:"pending,omitempty"` // why it was not measured
	KARPS    []float64 `json:"ka_rps"`
	KAP99    []float64 `json:"ka_p99_ms"`
	CloseRPS []float64 `json:"close_rps"`
	CloseP99 []float64 `json:"close_p99_ms"`
	// Master's CPU (user+system, from /proc/PID/stat) per request of each
	// run, in µs: prefork's or the reference master's; none for others.
	KACPU    []float64 `json:"ka_cpu_us,omitempty"`
	CloseCPU []float64 `json:"close_cpu_us,omitempty"`
}

// Dist is the per-worker spread of one contender at one load, per repetition.
type Dist struct {
	Group  string    `json:"group"`
	Name   string    `json:"name"`
	Load   string    `json:"load"` // "full" or "half"
	RPS    []float64 `json:"rps"`
	Counts [][]int   `json:"counts"` // per repetition, one count per worker
}

// Mem is one supervisor's resident memory, per repetition, in KiB.
type Mem struct {
	Name string    `json:"name"`
	KiB  []float64 `json:"kib"`
}

// Life is one startup or restart timing, per repetition, in milliseconds.
type Life struct {
	Name string    `json:"name"`
	Ms   []float64 `json:"ms"`
}

// PoolRow is one pool size under the step load of bench/harness/pool.go, per
// repetition.
type PoolRow struct {
	Name       string    `json:"name"`
	P99ms      []float64 `json:"p99_ms"`      // requests sent during the step
	MaxMs      []float64 `json:"max_ms"`      // the same
	Failed     []float64 `json:"failed"`      // requests not answered
	CapacityMs []float64 `json:"capacity_ms"` // from the step until no request waits for a worker; -1 never
	Workers    []float64 `json:"workers"`     // ready at the end of the step
}

// Median of xs; 0 for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// MaxMin is the largest count over the smallest (+Inf style 0 guard: a worker
// that got nothing makes it the count of the busiest one over 1, flagged by the
// caller through Jain's index).
func MaxMin(counts []int) float64 {
	if len(counts) == 0 {
		return 0
	}
	lo, hi := slices.Min(counts), slices.Max(counts)
	if lo == 0 {
		lo = 1
	}
	return float64(hi) / float64(lo)
}

// Jain is Jain's fairness index (sum x)^2 / (n sum x^2): 1 when every worker
// got the same, 1/n when one got everything.
func Jain(counts []int) float64 {
	var s, s2 float64
	for _, c := range counts {
		s += float64(c)
		s2 += float64(c) * float64(c)
	}
	if s2 == 0 {
		return 0
	}
	return s * s / (float64(len(counts)) * s2)
}

// MaxDev is the largest deviation of a count from the mean, as a fraction.
func MaxDev(counts []int) float64 {
	if len(counts) == 0 {
		return 0
	}
	var s float64
	for _, c := range counts {
		s += float64(c)
	}
	mean := s / float64(len(counts))
	if mean == 0 {
		return 0
	}
	var d float64
	for _, c := range counts {
		d = max(d, abs(float64(c)-mean)/mean)
	}
	return d
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

// Load reads results from path.
func Load(path string) (*Results, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Results
	return &r, json.Unmarshal(b, &r)
}

// Save writes results to path.
func (r *Results) Save(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
