//go:build linux

// This file tests --user: prefork binds as root (a port below 1024 too), workers
// run as the user with its groups, reach their notify socket and the unix socket
// listener, and still die with prefork after the credential change.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	pw "github.com/prefork/prefork/worker"
)

func init() {
	extraRoles["whoami"] = whoamiWorker
	if os.Getenv(workerEnv) == "whoami" {
		// The parent-death signal is a per-thread setting, kept by the thread
		// that execs (the main one): read it there.
		runtime.LockOSThread()
	}
}

// whoami is what the whoami worker says about its credentials.
type whoami struct {
	PID       int    `json:"pid"`
	UID       int    `json:"uid"`
	EUID      int    `json:"euid"`
	GID       int    `json:"gid"`
	EGID      int    `json:"egid"`
	Groups    []int  `json:"groups"`
	Pdeathsig int    `json:"pdeathsig"`
	Notify    string `json:"notify"`   // its NOTIFY_SOCKET
	DialUnix  string `json:"dialunix"` // error connecting to TESTWORKER_DIAL, "" if it worked
}

// whoamiWorker serves its credentials over HTTP on every listener.
func whoamiWorker() int {
	me := whoami{PID: os.Getpid(), UID: os.Getuid(), EUID: os.Geteuid(), GID: os.Getgid(), EGID: os.Getegid(),
		Notify: os.Getenv("NOTIFY_SOCKET")}
	me.Groups, _ = syscall.Getgroups()
	var sig int32
	syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_GET_PDEATHSIG, uintptr(unsafe.Pointer(&sig)), 0)
	me.Pdeathsig = int(sig)
	ls, err := pw.Listeners()
	if err != nil {
		fmt.Fprintln(os.Stderr, "whoami worker:", err)
		return 3
	}
	if c, err := net.Dial("unix", os.Getenv("TESTWORKER_DIAL")); err != nil {
		me.DialUnix = err.Error()
	} else {
		c.Close()
	}
	body, _ := json.Marshal(me)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) })}
	for _, l := range ls {
		go srv.Serve(l)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	if err := sdNotify("READY=1"); err != nil { // the test runs with --ready notify
		fmt.Fprintln(os.Stderr, "whoami worker: notify:", err)
		return 3
	}
	<-stop
	return 0
}

// freeLowPort finds a free TCP port below 1024 on 127.0.0.1.
func freeLowPort(t *testing.T) int {
	t.Helper()
	for p := 991; p > 600; p-- {
		if l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p)); err == nil {
			l.Close()
			return p
		}
	}
	t.Skip("no free port below 1024")
	return 0
}

// worldDir makes a directory every user can enter, holding a copy of the test
// binary: the worker runs as another user, who cannot reach the go build cache.
func worldDir(t *testing.T) (dir, bin string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "prefork-user-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin = filepath.Join(dir, "worker.test")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, bin
}

func askWhoami(c *http.Client, url string) (whoami, error) {
	var me whoami
	resp, err := c.Get(url)
	if err != nil {
		return me, err
	}
	defer resp.Body.Close()
	return me, json.NewDecoder(resp.Body).Decode(&me)
}

// dead reports whether pid is gone or a zombie.
func dead(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	_, after, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(after, "Z")
}

func TestUserDropsPrivileges(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("switching users needs root")
	}
	cases := []struct {
		user       string
		uid, gid   int
		groups     string
		sockGroups int
	}{
		{"nobody", 65534, 65534, "[65534]", 65534},
		{"nobody:daemon", 65534, 1, "[1]", 1},     // as runuser -u nobody -g daemon: the group replaces nogroup
		{"99999", 99999, 99999, "[99999]", 99999}, // a uid with no account, as container images run them
	}
	for _, c := range cases {
		t.Run(c.user, func(t *testing.T) {
			if _, _, _, err := lookupUser(c.user); err != nil {
				t.Skipf("--user %s: %v", c.user, err)
			}
			dir, bin := worldDir(t)
			port := freeLowPort(t)
			sock := filepath.Join(dir, "app.sock")
			in := startPrefork(t, "", []string{workerEnv + "=whoami", "TESTWORKER_DIAL=" + sock},
				"--user", c.user, "-l", "127.0.0.1:"+strconv.Itoa(port), "-l", "unix:"+sock, "-n", "2",
				"--ready", "notify", "--", bin)
			// Ready means each worker reached its notify socket as the user.
			st := in.readyWorkers(2, 20*time.Second)

			tcp := &http.Client{Timeout: 5 * time.Second}
			me, err := askWhoami(tcp, fmt.Sprintf("http://127.0.0.1:%d/", port))
			if err != nil {
				t.Fatal(err)
			}
			if me.UID != c.uid || me.EUID != c.uid || me.GID != c.gid || me.EGID != c.gid || fmt.Sprint(me.Groups) != c.groups {
				t.Errorf("worker runs as uid %d/%d gid %d/%d groups %v; want %d, %d, %s",
					me.UID, me.EUID, me.GID, me.EGID, me.Groups, c.uid, c.gid, c.groups)
			}
			if me.Pdeathsig != int(syscall.SIGKILL) {
				t.Errorf("worker's parent-death signal is %d after the user change, want SIGKILL", me.Pdeathsig)
			}
			if me.DialUnix != "" {
				t.Errorf("the worker cannot connect to the unix socket listener: %s", me.DialUnix)
			}
			fi, err := os.Stat(filepath.Dir(me.Notify))
			if err != nil {
				t.Fatal(err)
			}
			// prefork's directory, which the user's group may enter but not
			// write (a worker could otherwise swap a socket for a symbolic link
			// that root then chowns); the socket is the user's, 0600.
			if s := fi.Sys().(*syscall.Stat_t); s.Uid != 0 || int(s.Gid) != c.gid || fi.Mode().Perm() != 0o710 {
				t.Errorf("notify directory %s: %d:%d, mode %v; want root's, the user's group, 0710", filepath.Dir(me.Notify), s.Uid, s.Gid, fi.Mode().Perm())
			}
			if fi, err := os.Lstat(me.Notify); err != nil {
				t.Error(err)
			} else if s := fi.Sys().(*syscall.Stat_t); int(s.Uid) != c.uid || fi.Mode().Perm() != 0o600 {
				t.Errorf("notify socket %s: owner %d, mode %v; want the user's, 0600", me.Notify, s.Uid, fi.Mode().Perm())
			}
			if fi, err := os.Stat(sock); err != nil {
				t.Error(err)
			} else if s := fi.Sys().(*syscall.Stat_t); int(s.Uid) != c.uid || int(s.Gid) != c.sockGroups {
				t.Errorf("unix socket %s belongs to %d:%d, want %d:%d", sock, s.Uid, s.Gid, c.uid, c.sockGroups)
			}
			unix := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, "unix", sock)
				}}}
			if me, err := askWhoami(unix, "http://unix/"); err != nil || me.UID != c.uid {
				t.Errorf("over the unix socket: %+v, %v", me, err)
			}

			// The parent-death signal survives the credential change.
			in.signal(syscall.SIGKILL)
			in.wait(10 * time.Second)
			for _, w := range st.Workers {
				deadline := time.Now().Add(10 * time.Second)
				for !dead(w.PID) && time.Now().Before(deadline) {
					time.Sleep(20 * time.Millisecond)
				}
				if !dead(w.PID) {
					t.Errorf("worker %d (running as %s) outlived a SIGKILLed prefork", w.PID, c.user)
					syscall.Kill(w.PID, syscall.SIGKILL)
				}
			}
		})
	}
}

// --worker-output with --user: the workers' pipes are theirs all the same.
func TestWorkerOutputAsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	_, bin := worldDir(t)
	checkChatter(t, bin, "json", "--user", "nobody")
}
