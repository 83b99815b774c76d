// This file tests the CPU count for -n auto in sys_linux.go: the cgroup parsers on text and
// on a fake cgroup tree, and the affinity count against the real process.
package main

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

func TestParseCPUMax(t *testing.T) {
	for in, want := range map[string]int{
		"max 100000\n":    0,
		"max":             0,
		"100000 100000\n": 1,
		"50000 100000":    1,
		"150000 100000":   2,
		"400000 100000":   4,
		"250000 100000\n": 3,
		"1000 1000":       1,
		"200000":          2, // period defaults to 100000
		"":                0,
		"x 100000":        0,
		"100000 0":        0,
		"-1 100000":       0,
		"1 2 3":           0,
	} {
		if got := parseCPUMax(in); got != want {
			t.Errorf("parseCPUMax(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestParseCFS(t *testing.T) {
	for _, tc := range []struct {
		quota, period string
		want          int
	}{
		{"-1\n", "100000\n", 0},
		{"200000\n", "100000\n", 2},
		{"50000", "100000", 1},
		{"150001", "50000", 4},
		{"", "", 0},
		{"100000", "", 0},
	} {
		if got := parseCFS(tc.quota, tc.period); got != tc.want {
			t.Errorf("parseCFS(%q, %q) = %d, want %d", tc.quota, tc.period, got, tc.want)
		}
	}
}

func TestParseProcCgroup(t *testing.T) {
	for _, tc := range []struct{ in, v2, v1 string }{
		{"0::/user.slice/user-1000.slice/session-2.scope\n", "/user.slice/user-1000.slice/session-2.scope", ""},
		{"12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n1:name=systemd:/docker/abc\n", "", "/docker/abc"},
		{"9:name=systemd:/\n2:cpuacct:/a\n1:cpu:/b\n0::/c\n", "/c", "/b"},
		{"4:cpuset:/x\n3:cpuacct,cpu:/y\n", "", "/y"},
		{"", "", ""},
		{"garbage\n0:/\n", "", ""},
	} {
		v2, v1 := parseProcCgroup(tc.in)
		if v2 != tc.v2 || v1 != tc.v1 {
			t.Errorf("parseProcCgroup(%q) = %q, %q; want %q, %q", tc.in, v2, v1, tc.v2, tc.v1)
		}
	}
}

func TestCgroupCPUs(t *testing.T) {
	write := func(root, rel, text string) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	v2 := t.TempDir()
	write(v2, "a/cpu.max", "300000 100000\n")
	write(v2, "a/b/cpu.max", "max 100000\n")
	write(v2, "a/b/c/cpu.max", "500000 100000\n")
	write(v2, "other/cpu.max", "100000 100000\n")
	for _, tc := range []struct {
		proc string
		want int
	}{
		{"0::/a/b/c\n", 3},   // the parent's quota is tighter
		{"0::/a/b\n", 3},     // unlimited here, limited above
		{"0::/\n", 0},        // the root has no cpu.max
		{"0::/nowhere\n", 0}, // unknown paths fall back to the mount's root
		{"0::/../a/b\n", 3},  // outside this cgroup namespace
		{"1:cpu:/a\n", 0},    // v1 path, but the tree is v2
	} {
		if got := cgroupCPUs(v2, tc.proc); got != tc.want {
			t.Errorf("v2 cgroupCPUs(%q) = %d, want %d", tc.proc, got, tc.want)
		}
	}

	hybrid := t.TempDir() // v2 under unified/, v1 cpu controller beside it
	write(hybrid, "unified/s/cpu.max", "700000 100000\n")
	write(hybrid, "cpu,cpuacct/docker/x/cpu.cfs_quota_us", "250000\n")
	write(hybrid, "cpu,cpuacct/docker/x/cpu.cfs_period_us", "100000\n")
	write(hybrid, "cpu,cpuacct/docker/cpu.cfs_quota_us", "-1\n")
	write(hybrid, "cpu,cpuacct/docker/cpu.cfs_period_us", "100000\n")
	for _, tc := range []struct {
		proc string
		want int
	}{
		{"3:cpu,cpuacct:/docker/x\n0::/s\n", 3},
		{"3:cpu,cpuacct:/docker\n0::/s\n", 7},
		{"3:cpu,cpuacct:/docker\n", 0},
	} {
		if got := cgroupCPUs(hybrid, tc.proc); got != tc.want {
			t.Errorf("hybrid cgroupCPUs(%q) = %d, want %d", tc.proc, got, tc.want)
		}
	}
}

func TestAffinityCPUs(t *testing.T) {
	// The runtime counts the same mask at start-up.
	if got := affinityCPUs(); got != runtime.NumCPU() {
		t.Errorf("affinityCPUs() = %d, runtime.NumCPU() = %d", got, runtime.NumCPU())
	}
}

func TestAutoWorkers(t *testing.T) {
	n := autoWorkers()
	if n < 1 || n > runtime.NumCPU() {
		t.Fatalf("autoWorkers() = %d, NumCPU = %d", n, runtime.NumCPU())
	}
	t.Logf("autoWorkers() = %d, runtime.NumCPU() = %d", n, runtime.NumCPU())
}
