//go:build linux || darwin

// This file tests what prefork refuses at start (issues 9.6, 9.8, 9.12): a
// second prefork on the port or on a live pidfile, adopted sockets that do not
// listen, and output files it cannot write.
package main

import (
	"fmt"
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
)

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
