//go:build linux || darwin

// This file holds what the hardening tests (issue 9) share: the launchers for
// a prefork run to its end (runPrefork) or behind a wrapper or a pipe
// (startPreforkWrapped, startPreforkOut), the notify-send worker role, and
// writeScript. The tests are in hardening_*_test.go, one concern a file:
// exec failures and workdirs, notification senders, refusals at start, the
// descriptor limit, signals; hardening_linux_test.go holds those reading /proc.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
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
	code := exitStatus(cmd.ProcessState.Sys().(syscall.WaitStatus))
	if judgeExit(t, string(out), code, true) {
		t.Logf("prefork output:\n%s", out)
	}
	return code, string(out), time.Since(start)
}

// startPreforkOut is startPrefork with prefork's stdout and stderr going to out
// (a pipe the test controls) instead of the instance's buffer, which the test
// may fill itself.
func startPreforkOut(t *testing.T, out *os.File, role string, extraEnv []string, args ...string) *instance {
	t.Helper()
	in := newInstance(t)
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

// startPreforkWrapped is startPrefork for a prefork started behind wrap
// (prlimit, sh), with the worker command in args.
func startPreforkWrapped(t *testing.T, wrap []string, env []string, args ...string) *instance {
	t.Helper()
	in := newInstance(t)
	argv := append(append(append([]string(nil), wrap...), os.Args[0], "--status-file", in.status), args...)
	in.cmd = exec.Command(argv[0], argv[1:]...)
	in.cmd.Env = preforkEnv("", env...)
	in.cmd.Stderr, in.cmd.Stdout = in.stderr, in.stderr
	in.watch()
	return in
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

// One worker's shutdown(2) of the listening socket all workers share stops it
// for every process; prefork notices and makes it listen again.
func TestListenerShutDownByAWorker(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("needs python3")
	}
	script := "import socket, time\ns = socket.socket(fileno=3)\ns.shutdown(socket.SHUT_RDWR)\ntime.sleep(60)\n"
	in := startPrefork(t, "", nil, "-l", "127.0.0.1:0", "-n", "1", "--ready", "delay", "--ready-delay", "300ms", "--grace", "1s",
		"--", "python3", "-c", script)
	in.readyWorkers(1, 10*time.Second)
	addr := in.addr()
	in.waitLog("listening again", 10*time.Second)
	c, err := net.DialTimeout("tcp", addr, 5*time.Second) // the kernel completes it: the socket listens
	if err != nil {
		t.Fatalf("after the worker's shutdown: %v", err)
	}
	c.Close()
}
