//go:build linux || darwin

// This file tests commands prefork cannot execute (issue 9.2), at start and at
// a reload, and deploys that swap or delete the working directory (issue 9.10).
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Issue 9.2: a command that cannot be executed stops prefork at once with 126
// or 127 and a message naming the cause: found before any worker starts where
// prefork can tell, else reported by the shim of the first worker.
func TestExecFailuresFailFast(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, text string
		code       int
		want       string
		viaShim    bool // only execve can tell (binaries: where it looks like one)
	}{
		{"no #! line", "echo hello\n", 126, "exec format error", false},
		{"missing interpreter", "#!/no/such/interpreter\n", 127, "interpreter /no/such/interpreter not found", false},
		{"relative interpreter", "#!no-such-interpreter\n", 127, "interpreter no-such-interpreter not found", true},
		{"broken binary", "\x7fELF\x02\x01\x01 not really an ELF file, but it starts like one\n", 126, "exec format error", true},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("cmd%d", i))
			writeScript(t, path, c.text)
			code, out, took := runPrefork(t, nil, preforkEnv(""), nil, "-v", "-l", "127.0.0.1:0", "-n", "4", "--backoff-min", "1s", "--", path)
			if code != c.code || !strings.Contains(out, c.want) {
				t.Errorf("status %d, want %d with %q:\n%s", code, c.code, c.want, out)
			}
			// A file that looks like a binary of this system (or, with
			// binfmt_misc formats registered, any file without #!) passes the
			// check: execve tells.
			viaShim := c.viaShim
			if !strings.HasPrefix(c.text, "#!") {
				viaShim = execFormatKnown([]byte(c.text))
			}
			if started := strings.Count(out, "worker started slot="); viaShim != (started > 0) || started > 4 {
				t.Errorf("%d workers started (found by the shim: %v):\n%s", started, viaShim, out)
			}
			if strings.Contains(out, "restarting after backoff") || took > 5*time.Second {
				t.Errorf("prefork restarted the command (it took %v):\n%s", took, out)
			}
		})
	}
}

// A bare name whose only match on $PATH is not executable is 126, as execvp
// and the shells have it, not "command not found".
func TestNotExecutableOnPath(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "server")
	writeScript(t, path, "#!/bin/sh\nexit 0\n")
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runPrefork(t, nil, append(preforkEnv(""), "PATH="+dir), nil, "-l", "127.0.0.1:0", "-n", "1", "--", "server")
	if code != 126 || !strings.Contains(out, "permission denied") || strings.Contains(out, "worker started") {
		t.Errorf("status %d, want 126, permission denied and no worker:\n%s", code, out)
	}
}

// Issue 9.2: a reload whose new command cannot be executed is abandoned, found
// by the check before it starts or reported by the shim, and the old workers
// keep serving; a good command reloads afterwards.
func TestReloadWithBrokenCommandKeepsOldWorkers(t *testing.T) {
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			server := filepath.Join(dir, "server")
			good := "#!/bin/sh\nexec " + os.Args[0] + "\n"
			writeScript(t, server, good)
			in := startPrefork(t, "", []string{workerEnv + "=http"}, "--mode", mode, "-l", "127.0.0.1:0", "-n", "2",
				"--ready", "notify", "--", server)
			st := in.readyWorkers(2, 15*time.Second)
			addr := in.addr()
			old := map[int]bool{st.Workers[0].PID: true, st.Workers[1].PID: true}
			for _, c := range []struct{ text, log string }{
				{"#!/no/such/interpreter\n", "reload abandoned; the old workers keep serving"},
				{"\x7fELF\x02\x01\x01 not really an ELF file\n", server + ": exec format error"}, // the shim's, on Linux
			} {
				writeScript(t, server, c.text)
				in.signal(syscall.SIGHUP)
				in.waitLog(c.log, 10*time.Second)
				time.Sleep(200 * time.Millisecond)
				st, _ := in.readStatus()
				for _, w := range st.Workers {
					if !old[w.PID] || w.State != "ready" {
						t.Fatalf("after a reload to a broken command the workers are %+v; want the old ones serving", st.Workers)
					}
				}
				for i := 0; i < 10; i++ {
					if rep, err := get(addr); err != nil || !old[rep.PID] {
						t.Fatalf("request %d: %v, answered by %d", i, err, rep.PID)
					}
				}
			}
			if !strings.Contains(in.stderr.String(), "exec format error") {
				t.Errorf("the shim's reason is not in the log")
			}
			writeScript(t, server, good)
			in.signal(syscall.SIGHUP)
			in.waitLog("reload complete", 15*time.Second)
			in.signal(syscall.SIGTERM)
			if code := in.wait(20 * time.Second); code != 0 {
				t.Fatalf("exit status %d, want 0", code)
			}
		})
	}
}

// Issue 9.10: prefork started in a `current` symlink re-enters it at each
// reload: workers of the new generation run the release it points to then,
// in that directory, and restarts keep working once the old release is gone.
// Restarts between deploys stay in the release of their generation.
func TestReloadReentersWorkdir(t *testing.T) {
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			base, err := filepath.EvalSymlinks(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range []string{"1", "2"} {
				rel := filepath.Join(base, "releases", r)
				if err := os.MkdirAll(rel, 0o755); err != nil {
					t.Fatal(err)
				}
				writeScript(t, filepath.Join(rel, "server"), "#!/bin/sh\nPREFORK_TEST_RELEASE="+r+" exec "+os.Args[0]+"\n")
			}
			current := filepath.Join(base, "current")
			if err := os.Symlink("releases/1", current); err != nil {
				t.Fatal(err)
			}
			// The shell keeps $PWD through the symlink, as a login shell does.
			in := startPreforkWrapped(t, []string{"/bin/sh", "-c", `cd "$0" && exec "$@"`, current},
				[]string{workerEnv + "=http"}, "-v", "--mode", mode, "-l", "127.0.0.1:0", "-n", "2", "--ready", "notify", "--", "./server")
			check := func(st statusFile, release string) {
				t.Helper()
				for _, w := range st.Workers {
					cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", w.PID))
					if err == nil && cwd != filepath.Join(base, "releases", release) {
						t.Errorf("worker %d runs in %s, want releases/%s", w.PID, cwd, release)
					}
				}
				seen := map[string]bool{}
				for i := 0; i < 10; i++ {
					rep, err := get(in.addr())
					if err != nil {
						t.Fatalf("request %d: %v", i, err)
					}
					seen[rep.Env["PREFORK_TEST_RELEASE"]] = true
				}
				if len(seen) != 1 || !seen[release] {
					t.Errorf("answers came from releases %v, want only %s", seen, release)
				}
			}
			replaced := func(victim int) statusFile {
				t.Helper()
				syscall.Kill(victim, syscall.SIGKILL)
				return in.waitFor("the restart", 15*time.Second, readyWhere(2, func(w workerStatus) bool { return w.PID != victim }))
			}
			st := in.readyWorkers(2, 15*time.Second)
			check(st, "1")
			// Deploy: current now points at releases/2.
			tmp := filepath.Join(base, "current.new")
			if err := os.Symlink("releases/2", tmp); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, current); err != nil {
				t.Fatal(err)
			}
			check(replaced(st.Workers[0].PID), "1") // a restart before the reload: its generation's release
			in.signal(syscall.SIGHUP)
			st = in.waitFor("generation 2", 20*time.Second, readyWhere(2, func(w workerStatus) bool { return w.Generation == 2 }))
			check(st, "2")
			if err := os.RemoveAll(filepath.Join(base, "releases", "1")); err != nil {
				t.Fatal(err)
			}
			check(replaced(st.Workers[1].PID), "2")
			in.signal(syscall.SIGTERM)
			if code := in.wait(20 * time.Second); code != 0 {
				t.Fatalf("exit status %d, want 0", code)
			}
		})
	}
}

// Issue 9.10, the other side: a working directory that is deleted under a
// prefork whose command does not live there (an absolute path) changes
// nothing: reloads and restarts still work, the workers staying where
// prefork is.
func TestGoneWorkdirStillReloads(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "gone")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	in := startPreforkWrapped(t, []string{"/bin/sh", "-c", `cd "$0" && exec "$@"`, dir}, []string{workerEnv + "=http"},
		"-v", "-l", "127.0.0.1:0", "-n", "2", "--ready", "notify", "--", os.Args[0])
	st := in.readyWorkers(2, 15*time.Second)
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	in.signal(syscall.SIGHUP)
	in.waitLog("reload complete", 15*time.Second)
	victim := st.Workers[0].PID
	for _, w := range in.readyWorkers(2, 15*time.Second).Workers {
		victim = w.PID
	}
	syscall.Kill(victim, syscall.SIGKILL)
	in.waitFor("the restart", 15*time.Second, readyWhere(2, func(w workerStatus) bool { return w.PID != victim }))
	if _, err := get(in.addr()); err != nil {
		t.Fatal(err)
	}
	in.signal(syscall.SIGTERM)
	if code := in.wait(20 * time.Second); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
}
