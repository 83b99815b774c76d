//go:build linux || darwin

// This file tests what hostile workers, bad input and careless operators did
// to prefork (issue 9): a broken stderr, forged notifications, a second
// prefork on the port, the descriptor limit, adopted sockets that do not
// listen, files prefork cannot write, commands that cannot be executed, and
// deploys that swap the working directory. hardening_linux_test.go holds the
// signal tests.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pw "github.com/prefork/prefork/worker"
)

// Only the test binary playing prefork catches signals from its first instant:
// playing a worker, it must die of a TERM sent while it starts. Package
// variables are initialised before any init function runs.
var _ = func() bool { earlySignalsOff = os.Getenv(roleEnv) != "prefork"; return true }()

func init() {
	// A process started by a worker that sends what TESTWORKER_SEND says (READY=1
	// by default) to NOTIFY_SOCKET, then stays a while in the worker's process
	// group so that prefork can place it.
	extraRoles["notify-send"] = func() int {
		msg := os.Getenv("TESTWORKER_SEND")
		if msg == "" {
			msg = "READY=1"
		}
		if err := pw.Notify(msg); err != nil {
			fmt.Fprintln(os.Stderr, "notify-send:", err)
			return 1
		}
		time.Sleep(2 * time.Second)
		return 0
	}
}

// preforkEnv is the environment of the test binary playing prefork.
func preforkEnv(role string, extra ...string) []string {
	env := append(os.Environ(), roleEnv+"=prefork", workerEnv+"="+role, "GORACE=atexit_sleep_ms=0")
	return append(env, extra...)
}

// runPrefork runs prefork (behind wrap, such as prlimit, when given) to its end
// and returns its exit status, its output and how long it ran.
func runPrefork(t *testing.T, wrap []string, env []string, files []*os.File, args ...string) (int, string, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	argv := append(append(append([]string(nil), wrap...), os.Args[0]), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	cmd.ExtraFiles = files
	start := time.Now()
	out, _ := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("prefork did not exit within 30s; output:\n%s", out)
	}
	code := cmd.ProcessState.ExitCode()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		code = 128 + int(ws.Signal())
	}
	if strings.Contains(string(out), "WARNING: DATA RACE") {
		t.Errorf("the race detector found a race in prefork:\n%s", out)
	}
	return code, string(out), time.Since(start)
}

// watch starts in.cmd and judges its end as startPrefork does: a race the
// detector found, or an exit status the test did not read itself, fails the
// test.
func (in *instance) watch() {
	t := in.t
	t.Helper()
	if err := in.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		in.cmd.Wait()
		in.code = in.cmd.ProcessState.ExitCode()
		if ws, ok := in.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			in.code = 128 + int(ws.Signal())
		}
		close(in.done)
	}()
	t.Cleanup(func() {
		select {
		case <-in.done:
		default:
			in.cmd.Process.Signal(syscall.SIGQUIT)
			select {
			case <-in.done:
			case <-time.After(10 * time.Second):
				in.cmd.Process.Kill()
				<-in.done
			}
		}
		out := in.stderr.String()
		if strings.Contains(out, "WARNING: DATA RACE") {
			t.Errorf("the race detector found a race in prefork")
		}
		if !in.waited && in.code != 0 {
			t.Errorf("prefork exited with status %d", in.code)
		}
		if t.Failed() {
			t.Logf("prefork stderr:\n%s", out)
		}
	})
}

// startPreforkOut is startPrefork with prefork's stdout and stderr going to out
// (a pipe the test controls) instead of the instance's buffer, which the test
// may fill itself.
func startPreforkOut(t *testing.T, out *os.File, role string, extraEnv []string, args ...string) *instance {
	t.Helper()
	in := &instance{t: t, stderr: &syncBuffer{}, status: filepath.Join(t.TempDir(), "status.json"), done: make(chan struct{})}
	full := append([]string{"--status-file", in.status, "-v"}, args...)
	if role != "" {
		full = append(full, "--", os.Args[0])
	}
	in.cmd = exec.Command(os.Args[0], full...)
	in.cmd.Env = preforkEnv(role, extraEnv...)
	in.cmd.Stderr, in.cmd.Stdout = out, out
	in.watch()
	return in
}

// Issue 9.1: whatever reads prefork's stderr goes away; the next log line must
// not kill prefork (and with it every worker).
func TestBrokenStderrKeepsServing(t *testing.T) {
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			in := startPreforkOut(t, w, "http", nil, "--mode", mode, "-l", "127.0.0.1:0", "-n", "2", "--ready", "notify")
			w.Close()
			copied := make(chan struct{})
			go func() { io.Copy(in.stderr, r); close(copied) }()
			st := in.readyWorkers(2, 15*time.Second)
			addr := in.addr()
			r.Close() // the log reader goes away
			<-copied
			victim := st.Workers[0].PID
			syscall.Kill(victim, syscall.SIGKILL) // prefork logs its exit and the restart
			st = in.waitFor("the replacement", 15*time.Second, func(st statusFile) bool {
				if len(st.Workers) != 2 {
					return false
				}
				for _, w := range st.Workers {
					if w.PID == victim || w.State != stateReady {
						return false
					}
				}
				return true
			})
			for i := 0; i < 20; i++ {
				if _, err := get(addr); err != nil {
					t.Fatalf("request %d after stderr broke: %v", i, err)
				}
			}
			in.signal(syscall.SIGTERM) // more log lines, then a clean exit
			if code := in.wait(20 * time.Second); code != 0 {
				t.Fatalf("prefork exited with status %d after its stderr broke, want 0", code)
			}
		})
	}
}

// Issue 9.3: a datagram sent to a worker's NOTIFY_SOCKET by a process outside
// the worker's process group does not count; one from a process the worker
// started does.
func TestNotifyFromOutsideIgnored(t *testing.T) {
	if !notifyChecksSender {
		t.Skip("this platform cannot tell who sent a datagram")
	}
	marks := t.TempDir()
	goFile := filepath.Join(marks, "go")
	// The worker never says READY=1 itself: a child of it does, once told to.
	script := `while [ ! -e "$0" ]; do sleep 0.02; done; TESTWORKER=notify-send "$1" & exec sleep 60`
	in := startPrefork(t, "", nil, "-l", "127.0.0.1:0", "-n", "1", "--ready", "notify", "--ready-timeout", "60s",
		"--", "/bin/sh", "-c", script, goFile, os.Args[0])
	st := in.waitFor("a starting worker", 15*time.Second, func(st statusFile) bool { return len(st.Workers) == 1 })
	pid := st.Workers[0].PID
	var sock string // read again while the shim's exec replaces the environment
	for deadline := time.Now().Add(5 * time.Second); sock == "" && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range strings.Split(string(environ), "\x00") {
			if v, ok := strings.CutPrefix(kv, "NOTIFY_SOCKET="); ok {
				sock = v
			}
		}
	}
	if sock == "" {
		t.Fatalf("worker %d has no NOTIFY_SOCKET", pid)
	}
	// The test process itself, then a child of it in the test's process group.
	if err := pw.NotifySocket(sock, "READY=1\nSTATUS=forged"); err != nil {
		t.Fatal(err)
	}
	child := exec.Command(os.Args[0])
	child.Env = append(os.Environ(), workerEnv+"=notify-send", "NOTIFY_SOCKET="+sock, "TESTWORKER_SEND=READY=1\nSTATUS=forged by a child")
	if out, err := child.CombinedOutput(); err != nil {
		t.Fatalf("sender: %v\n%s", err, out)
	}
	time.Sleep(300 * time.Millisecond)
	if st, _ := in.readStatus(); len(st.Workers) != 1 || st.Workers[0].State != stateStarting || st.Workers[0].Status != "" {
		t.Fatalf("after READY=1 from outside its process group the worker is %+v; want it starting, with no status", st.Workers)
	}
	if err := os.WriteFile(goFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	in.readyWorkers(1, 10*time.Second) // the worker's own child counts
	in.waitLog("ignored a notification from outside the worker's process group", 5*time.Second)
}

// Issue 9.6: a second prefork in reuseport mode on a port another prefork
// serves refuses to start, instead of joining its SO_REUSEPORT group; a pidfile
// naming a live process is refused, a stale one replaced.
func TestSecondPreforkRefused(t *testing.T) {
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "prefork.pid")
	var first *instance
	if reuseportSupported {
		first = startPrefork(t, "http", nil, "--mode", "reuseport", "-l", "127.0.0.1:0", "-n", "2", "--pidfile", pidfile)
	} else {
		first = startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "2", "--pidfile", pidfile)
	}
	first.readyWorkers(2, 15*time.Second)
	_, port, _ := net.SplitHostPort(first.addr())
	mine, _ := os.ReadFile(pidfile)
	if reuseportSupported {
		for _, listen := range [][]string{{"-l", "127.0.0.1:" + port}, {"-p", port}} {
			args := append([]string{"--mode", "reuseport", "-n", "1"}, listen...)
			args = append(args, "--pidfile", filepath.Join(dir, "second.pid"), "--", os.Args[0])
			code, out, _ := runPrefork(t, nil, preforkEnv("http"), nil, args...)
			if code != 1 || !strings.Contains(out, "address already in use") || strings.Contains(out, "worker started") {
				t.Errorf("second prefork %v: status %d, want 1 with \"address already in use\" and no worker:\n%s", listen, code, out)
			}
		}
	}
	code, out, _ := runPrefork(t, nil, preforkEnv("http"), nil, "-l", "127.0.0.1:0", "-n", "1", "--pidfile", pidfile, "--", os.Args[0])
	want := fmt.Sprintf("--pidfile %s: it names pid %d, which is running", pidfile, first.cmd.Process.Pid)
	if code != 1 || !strings.Contains(out, want) || strings.Contains(out, "worker started") {
		t.Errorf("second prefork on a live pidfile: status %d, want 1 with %q:\n%s", code, want, out)
	}
	if now, _ := os.ReadFile(pidfile); string(now) != string(mine) {
		t.Errorf("the first prefork's pidfile now says %q, want %q", now, mine)
	}
	for i := 0; i < 5; i++ {
		if _, err := get(first.addr()); err != nil {
			t.Fatalf("the first prefork stopped serving: %v", err)
		}
	}
	first.signal(syscall.SIGTERM)
	if code := first.wait(20 * time.Second); code != 0 {
		t.Fatalf("first prefork: exit status %d, want 0", code)
	}
	// A stale pidfile: the process it names is gone.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(pidfile, []byte(strconv.Itoa(gone.Process.Pid)+"\n"), 0o644)
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "1", "--pidfile", pidfile)
	in.readyWorkers(1, 15*time.Second)
	if b, _ := os.ReadFile(pidfile); strings.TrimSpace(string(b)) != strconv.Itoa(in.cmd.Process.Pid) {
		t.Errorf("stale pidfile not replaced: it says %q, prefork is %d", b, in.cmd.Process.Pid)
	}
	in.signal(syscall.SIGTERM)
	in.wait(20 * time.Second)
	if runtime.GOOS != "linux" {
		return
	}
	// A stale pidfile whose pid was reused: the process that has it now
	// started after the file was written (after a reboot, say).
	reused := exec.Command("sleep", "30")
	if err := reused.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { reused.Process.Kill(); reused.Wait() }()
	os.WriteFile(pidfile, []byte(strconv.Itoa(reused.Process.Pid)+"\n"), 0o644)
	hourAgo := time.Now().Add(-time.Hour)
	os.Chtimes(pidfile, hourAgo, hourAgo)
	in = startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "1", "--pidfile", pidfile)
	in.readyWorkers(1, 15*time.Second)
	if b, _ := os.ReadFile(pidfile); strings.TrimSpace(string(b)) != strconv.Itoa(in.cmd.Process.Pid) {
		t.Errorf("pidfile naming a reused pid not replaced: it says %q, prefork is %d", b, in.cmd.Process.Pid)
	}
}

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
				"-n", "40", "--ready-delay", "100ms", "--", "/bin/sh", "-c", `ulimit -Sn > "$0/$$.tmp"; mv "$0/$$.tmp" "$0/$$"; exec sleep 60`, marks)
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

// startPreforkWrapped is startPrefork for a prefork started behind wrap
// (prlimit, sh), with the worker command in args.
func startPreforkWrapped(t *testing.T, wrap []string, env []string, args ...string) *instance {
	t.Helper()
	in := &instance{t: t, stderr: &syncBuffer{}, status: filepath.Join(t.TempDir(), "status.json"), done: make(chan struct{})}
	argv := append(append(append([]string(nil), wrap...), os.Args[0], "--status-file", in.status), args...)
	in.cmd = exec.Command(argv[0], argv[1:]...)
	in.cmd.Env = preforkEnv("", env...)
	in.cmd.Stderr, in.cmd.Stdout = in.stderr, in.stderr
	in.watch()
	return in
}

// Issue 9.8: a socket passed by socket activation that does not listen is
// refused with a message that says what it is.
func TestAdoptRefusesNonListening(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	connected, err := conn.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer connected.Close()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	bound := os.NewFile(uintptr(fd), "bound")
	defer bound.Close()
	regular, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer regular.Close()
	// The shell sets LISTEN_PID to its own pid, which exec hands to prefork.
	wrap := []string{"/bin/sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"`}
	var env []string
	for _, kv := range preforkEnv("http") {
		if !strings.HasPrefix(kv, "LISTEN_") {
			env = append(env, kv)
		}
	}
	for _, c := range []struct {
		name string
		file *os.File
		want string
	}{
		{"connected", connected, "socket activation: LISTEN_FDS=1: fd 3: is a connected stream socket (127.0.0.1:"},
		{"bound", bound, "fd 3: is a stream socket bound to \"127.0.0.1:"},
		{"regular file", regular, "fd 3: is a regular file, not a listening socket"},
	} {
		code, out, _ := runPrefork(t, wrap, env, []*os.File{c.file}, "-v", "-n", "1", "--", os.Args[0])
		if code != 1 || !strings.Contains(out, c.want) || strings.Contains(out, "worker started") {
			t.Errorf("%s: status %d, want 1 with %q and no worker:\n%s", c.name, code, c.want, out)
		}
	}
}

// Issue 9.12: a --status-file or --pidfile prefork cannot write is refused at
// start, before anything is bound.
func TestOutputFilesChecked(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	readOnly := filepath.Join(dir, "ro")
	os.Mkdir(readOnly, 0o555)
	if os.Geteuid() == 0 {
		readOnly = "/sys" // root writes through a 0555 mode; sysfs refuses new files to anyone
	}
	cases := []struct{ flag, path, want string }{
		{"--status-file", filepath.Join(dir, "missing", "status.json"), "directory " + filepath.Join(dir, "missing") + " does not exist"},
		{"--status-file", filepath.Join(file, "status.json"), file + " is not a directory"},
		{"--status-file", filepath.Join(readOnly, "status.json"), "cannot create files in " + readOnly},
		{"--status-file", dir, "is a directory"},
		{"--pidfile", filepath.Join(dir, "missing", "prefork.pid"), "directory " + filepath.Join(dir, "missing") + " does not exist"},
		{"--pidfile", filepath.Join(readOnly, "prefork.pid"), "cannot create files in " + readOnly},
	}
	if runtime.GOOS != "linux" {
		cases = cases[:2]
	}
	for _, c := range cases {
		code, out, _ := runPrefork(t, nil, preforkEnv("http"), nil, c.flag, c.path, "-l", "127.0.0.1:0", "-n", "1", "--", os.Args[0])
		want := fmt.Sprintf("prefork: error: %s %s: %s", c.flag, c.path, c.want)
		if code != 1 || !strings.Contains(out, want) || strings.Contains(out, "listening") {
			t.Errorf("%s %s: status %d, want 1 with %q before binding:\n%s", c.flag, c.path, code, want, out)
		}
	}
}

// writeScript writes an executable file.
func writeScript(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil { // a running script keeps its old file
		t.Fatal(err)
	}
}

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
					if !old[w.PID] || w.State != stateReady {
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
				return in.waitFor("the restart", 15*time.Second, func(st statusFile) bool {
					if len(st.Workers) != 2 {
						return false
					}
					for _, w := range st.Workers {
						if w.PID == victim || w.State != stateReady {
							return false
						}
					}
					return true
				})
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
			st = in.waitFor("generation 2", 20*time.Second, func(st statusFile) bool {
				if len(st.Workers) != 2 {
					return false
				}
				for _, w := range st.Workers {
					if w.Generation != 2 || w.State != stateReady {
						return false
					}
				}
				return true
			})
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

// Signals caught from prefork's first instant must not outlive the decision to
// supervise: the control client, waiting for a reload that never ends, still
// dies of the TERM (or ^C) sent to it.
func TestCtlClientKeepsDefaultSignals(t *testing.T) {
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	in := startPrefork(t, "", nil, "--control", ctl, "-l", "127.0.0.1:0", "-n", "1", "--ready", "notify",
		"--", "/bin/sh", "-c", "exec sleep 60")
	in.waitFor("a worker", 10*time.Second, func(st statusFile) bool { return len(st.Workers) == 1 })
	client := exec.Command(os.Args[0], "--ctl", ctl, "reload", "--timeout", "50s")
	client.Env = preforkEnv("")
	var out syncBuffer
	client.Stdout, client.Stderr = &out, &out
	if err := client.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { client.Wait(); close(done) }()
	in.waitLog("reload asked for on the control socket", 10*time.Second)
	time.Sleep(100 * time.Millisecond)
	client.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		client.Process.Kill()
		<-done
		t.Fatalf("the control client did not die of TERM:\n%s", out.String())
	}
	if ws := client.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("the control client ended with %v, want death by SIGTERM:\n%s", client.ProcessState, out.String())
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
	in.waitFor("the restart", 15*time.Second, func(st statusFile) bool {
		if len(st.Workers) != 2 {
			return false
		}
		for _, w := range st.Workers {
			if w.PID == victim || w.State != stateReady {
				return false
			}
		}
		return true
	})
	if _, err := get(in.addr()); err != nil {
		t.Fatal(err)
	}
	in.signal(syscall.SIGTERM)
	if code := in.wait(20 * time.Second); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
}
