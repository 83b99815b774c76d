//go:build linux || darwin

// This file tests the descriptor limit (issue 9.7): a pool that cannot fit is
// refused at once, and workers get the limit prefork was started with.
package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Issue 9.7: with a descriptor limit the pool cannot fit in, prefork exits 1
// at once, naming ulimit -n, before any worker starts. A low soft limit under a
// higher hard one is raised for prefork, and workers get the soft limit prefork
// was started with.
func TestDescriptorLimit(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("prlimit (util-linux) not installed")
	}
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			code, out, took := runPrefork(t, []string{prlimit, "--nofile=64:64", "--"}, preforkEnv("http"), nil,
				"-v", "--mode", mode, "-l", "127.0.0.1:0", "-n", "100", "--", os.Args[0])
			if code != 1 || !strings.Contains(out, "the limit is 64 (ulimit -n)") || !strings.Contains(out, "hint: raise the limit (ulimit -n") {
				t.Errorf("status %d, want 1 naming the limit:\n%s", code, out)
			}
			if strings.Contains(out, "worker started") {
				t.Errorf("a worker started:\n%s", out)
			}
			if took > 5*time.Second {
				t.Errorf("prefork took %v to give up", took)
			}
			// An elastic pool counts at its maximum.
			code, out, _ = runPrefork(t, []string{prlimit, "--nofile=64:64", "--"}, preforkEnv("http"), nil,
				"-v", "--mode", mode, "-l", "127.0.0.1:0", "-n", "2:100", "--", os.Args[0])
			if code != 1 || !strings.Contains(out, "100 workers in "+mode+" mode need about") || strings.Contains(out, "worker started") {
				t.Errorf("-n 2:100: status %d, want 1 naming the limit before any worker:\n%s", code, out)
			}

			marks := t.TempDir()
			in := startPreforkWrapped(t, []string{prlimit, "--nofile=64:4096", "--"}, nil, "-v", "--mode", mode, "-l", "127.0.0.1:0",
				"-n", "40", "--ready", "delay", "--ready-delay", "100ms", "--", "/bin/sh", "-c", `ulimit -Sn > "$0/$$.tmp"; mv "$0/$$.tmp" "$0/$$"; exec sleep 60`, marks)
			st := in.readyWorkers(40, 30*time.Second)
			for _, w := range st.Workers {
				var b []byte
				for deadline := time.Now().Add(10 * time.Second); len(b) == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
					b, _ = os.ReadFile(filepath.Join(marks, strconv.Itoa(w.PID)))
				}
				if strings.TrimSpace(string(b)) != "64" {
					t.Errorf("worker %d has a soft descriptor limit of %q, want the 64 prefork was started with", w.PID, b)
					break
				}
			}
			in.signal(syscall.SIGTERM)
			if code := in.wait(20 * time.Second); code != 0 {
				t.Errorf("exit status %d, want 0", code)
			}
		})
	}
}
