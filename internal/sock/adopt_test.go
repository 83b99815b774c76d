//go:build linux || darwin

// This file tests adopting sockets from systemd, in a re-executed child that
// inherits them the way systemd passes them.
package sock

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// adoptReport is what the TestAdoptSystemdChild helper process prints.
type adoptReport struct {
	Err       string
	Listeners []adoptedInfo
	Env       []string // LISTEN_* variables still set after Adopt
	Accepted  bool     // a queued connection was accepted on the first listener
}

type adoptedInfo struct {
	Name, Network, Addr, Text string
	FD                        int
	NonBlock, CloExec         bool
}

// TestAdoptSystemdChild is the helper process of TestAdoptSystemd, run by
// re-executing the test binary as os/exec's own tests do.
func TestAdoptSystemdChild(t *testing.T) {
	if os.Getenv("PREFORK_TEST_ROLE") != "adopt" {
		t.Skip("helper process for TestAdoptSystemd")
	}
	if os.Getenv("PREFORK_TEST_LISTEN_PID_SELF") != "" {
		os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	}
	syscall.SetNonblock(3, true) // Adopt must make it blocking again
	var rep adoptReport
	ls, err := Adopt()
	if err != nil {
		rep.Err = err.Error()
	}
	for _, l := range ls {
		fl, _ := fcntl(l.FD, syscall.F_GETFL, 0)
		fdfl, _ := fcntl(l.FD, syscall.F_GETFD, 0)
		rep.Listeners = append(rep.Listeners, adoptedInfo{
			l.Spec.Name, l.Spec.Network, l.Bound(), l.Spec.Text, l.FD, fl&syscall.O_NONBLOCK != 0, fdfl&syscall.FD_CLOEXEC != 0})
	}
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		if _, ok := os.LookupEnv(v); ok {
			rep.Env = append(rep.Env, v)
		}
	}
	if len(ls) > 0 && os.Getenv("PREFORK_TEST_ACCEPT") != "" {
		if nfd, _, err := syscall.Accept(ls[0].FD); err == nil {
			rep.Accepted = true
			syscall.Close(nfd)
		}
	}
	json.NewEncoder(os.Stdout).Encode(rep)
	os.Exit(0)
}

func TestAdoptSystemd(t *testing.T) {
	sock := filepath.Join(lstTempDir(t), "adopt.sock")
	ls := lstOpen(t, "127.0.0.1:0", "unix:"+sock, "udp:127.0.0.1:0")
	var files []*os.File
	for _, l := range ls {
		// A duplicate for ExtraFiles: an *os.File owns and closes its descriptor.
		dup, err := fcntl(l.FD, syscall.F_DUPFD_CLOEXEC, 10)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, os.NewFile(uintptr(dup), l.Bound()))
	}
	notSocket, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, notSocket)
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()

	run := func(t *testing.T, nfiles int, env ...string) adoptReport {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestAdoptSystemdChild$", "-test.count=1")
		cmd.ExtraFiles = files[:nfiles]
		for _, e := range os.Environ() {
			if !strings.HasPrefix(e, "LISTEN_") {
				cmd.Env = append(cmd.Env, e)
			}
		}
		// With -race, a child would otherwise sleep a second at exit.
		cmd.Env = append(cmd.Env, "PREFORK_TEST_ROLE=adopt", "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
		cmd.Env = append(cmd.Env, env...)
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("helper process: %v\n%s", err, out)
		}
		var rep adoptReport
		if err := json.Unmarshal(out, &rep); err != nil {
			t.Fatalf("helper output %q: %v", out, err)
		}
		if len(rep.Env) != 0 {
			t.Errorf("variables still set after Adopt: %v", rep.Env)
		}
		return rep
	}

	t.Run("named", func(t *testing.T) {
		c, err := net.Dial("tcp", ls[0].Bound()) // queued for the child to accept
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		rep := run(t, 3, "PREFORK_TEST_LISTEN_PID_SELF=1", "PREFORK_TEST_ACCEPT=1", "LISTEN_FDS=3", "LISTEN_FDNAMES=web:admin:dns")
		if rep.Err != "" {
			t.Fatal(rep.Err)
		}
		if len(rep.Listeners) != 3 {
			t.Fatalf("adopted %d listeners, want 3: %+v", len(rep.Listeners), rep.Listeners)
		}
		for i, want := range []struct{ name, network, text string }{
			{"web", "tcp", ls[0].Bound()},
			{"admin", "unix", "unix:" + sock},
			{"dns", "udp", ls[2].Bound()},
		} {
			got := rep.Listeners[i]
			if got.FD != 3+i || got.Name != want.name || got.Network != want.network || got.Addr != ls[i].Bound() || got.Text != want.text {
				t.Errorf("listener %d = %+v, want fd %d %s %s %s", i, got, 3+i, want.name, want.network, ls[i].Bound())
			}
			if got.NonBlock || !got.CloExec {
				t.Errorf("listener %d: non-blocking %v, close-on-exec %v", i, got.NonBlock, got.CloExec)
			}
		}
		if !rep.Accepted {
			t.Error("child could not accept on the adopted tcp socket")
		}
	})

	t.Run("unnamed", func(t *testing.T) {
		rep := run(t, 2, "PREFORK_TEST_LISTEN_PID_SELF=1", "LISTEN_FDS=2")
		if rep.Err != "" {
			t.Fatal(rep.Err)
		}
		var names []string
		for _, l := range rep.Listeners {
			names = append(names, l.Name)
		}
		want := []string{"tcp-127.0.0.1-" + strconv.Itoa(lstPort(t, ls[0].Bound())), "unix-adopt.sock"}
		if !slices.Equal(names, want) {
			t.Errorf("names %q, want %q", names, want)
		}
	})

	t.Run("other pid", func(t *testing.T) {
		rep := run(t, 2, "LISTEN_PID=1", "LISTEN_FDS=2", "LISTEN_FDNAMES=a:b")
		if rep.Err != "" || len(rep.Listeners) != 0 {
			t.Errorf("adopted %+v, %q for another process's LISTEN_PID", rep.Listeners, rep.Err)
		}
	})

	t.Run("absent", func(t *testing.T) {
		rep := run(t, 0)
		if rep.Err != "" || len(rep.Listeners) != 0 {
			t.Errorf("adopted %+v, %q without variables", rep.Listeners, rep.Err)
		}
	})

	for _, tc := range []struct {
		name, errText string
		nfiles        int
		env           []string
	}{
		{"bad count", `malformed LISTEN_FDS="two"`, 2, []string{"PREFORK_TEST_LISTEN_PID_SELF=1", "LISTEN_FDS=two"}},
		{"bad pid", `malformed LISTEN_PID="me"`, 2, []string{"LISTEN_PID=me", "LISTEN_FDS=2"}},
		{"names mismatch", "2 names for LISTEN_FDS=3", 3, []string{"PREFORK_TEST_LISTEN_PID_SELF=1", "LISTEN_FDS=3", "LISTEN_FDNAMES=a:b"}},
		{"not a socket", "fd 6: is a regular file, not a listening socket", 4, []string{"PREFORK_TEST_LISTEN_PID_SELF=1", "LISTEN_FDS=4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := run(t, tc.nfiles, tc.env...)
			if !strings.Contains(rep.Err, tc.errText) {
				t.Errorf("error %q, want %q", rep.Err, tc.errText)
			}
		})
	}
}
