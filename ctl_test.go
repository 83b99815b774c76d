//go:build linux || darwin

// This file tests the `prefork --ctl` client's errors and exit statuses: bad
// arguments and sockets, a reload or stop that outlasts --timeout, a prefork
// that goes away mid-request.
package main

import (
	"bytes"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestControlClientErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.sock")
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"status"}, 1, "does not exist"},
		{[]string{"frobnicate"}, 2, `unknown control command "frobnicate"`},
		{[]string{"scale"}, 2, "needs the number of workers"},
		{[]string{"scale", "0"}, 2, "not a number of workers"},
		{[]string{"reload", "--timeout", "soon"}, 2, "invalid value for --timeout"},
		{[]string{"status", "--bogus"}, 2, "unexpected argument"},
	}
	for _, c := range cases {
		code, _, errs := ctlCall(missing, c.args...)
		if code != c.code || !strings.Contains(errs, c.want) {
			t.Errorf("--ctl %v: exit %d %q; want %d and %q", c.args, code, errs, c.code, c.want)
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"--ctl", missing}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "needs a command") {
		t.Errorf("--ctl with no command: exit %d %q", code, errb.String())
	}

	// A stale socket file: nothing accepts.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	if code, _, errs := ctlCall(stale, "status"); code != 1 || !strings.Contains(errs, "nothing answers") {
		t.Errorf("stale socket: exit %d %q", code, errs)
	}

	// A socket that is not prefork's.
	other := filepath.Join(dir, "other.sock")
	ol, err := net.Listen("unix", other)
	if err != nil {
		t.Fatal(err)
	}
	defer ol.Close()
	go func() {
		for {
			c, err := ol.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("220 smtp.example ESMTP\n"))
			c.Read(make([]byte, 512))
			c.Close()
		}
	}()
	if code, _, errs := ctlCall(other, "status"); code != 1 || !strings.Contains(errs, "does not answer as prefork's control socket") {
		t.Errorf("foreign socket: exit %d %q", code, errs)
	}
}

// The reload's wait: a timeout exits 3 and leaves the reload going; prefork
// going away before the outcome exits 1.
func TestControlReloadTimeoutAndPreforkGone(t *testing.T) {
	sock := ctlSock(t)
	in, _, _ := startHeldReload(t, sock, 1, "--ready-timeout", "60s", "--grace", "2s")

	start := time.Now()
	code, _, errs := ctlCall(sock, "reload", "--timeout", "300ms")
	if code != exitTimeout || !strings.Contains(errs, "goes on in prefork") {
		t.Errorf("reload --timeout 300ms: exit %d %q; want %d", code, errs, exitTimeout)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("reload --timeout 300ms took %v", d)
	}
	if st, _ := in.readStatus(); len(st.Workers) != 2 {
		t.Errorf("the reload does not go on after the client's timeout: %+v", st)
	}

	done := make(chan string, 1)
	go func() {
		code, _, errs := ctlCall(sock, "reload") // joins the reload under way
		done <- fmt.Sprintf("%d %s", code, errs)
	}()
	time.Sleep(300 * time.Millisecond)
	in.signal(syscall.SIGTERM)
	select {
	case r := <-done:
		if !strings.HasPrefix(r, "1 ") || !strings.Contains(r, "stopping") {
			t.Errorf("reload while prefork stops: %q; want exit 1 saying prefork is stopping", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the reload client still waits after prefork stopped")
	}
	in.wait(10 * time.Second)
	if code, _, errs := ctlCall(sock, "status"); code != 1 {
		t.Errorf("status after prefork exited: exit %d %q, want 1", code, errs)
	}
}

// prefork killed outright during a reload: the client exits 1.
func TestControlPreforkKilledMidReload(t *testing.T) {
	if !hasPdeathsig {
		t.Skip("without a parent-death signal the workers would outlive the killed prefork")
	}
	sock := ctlSock(t)
	in, _, _ := startHeldReload(t, sock, 1)
	done := make(chan string, 1)
	go func() {
		code, _, errs := ctlCall(sock, "reload")
		done <- fmt.Sprintf("%d %s", code, errs)
	}()
	in.waitFor("the new worker", 10*time.Second, func(st statusFile) bool { return len(st.Workers) == 2 })
	time.Sleep(100 * time.Millisecond)
	in.signal(syscall.SIGKILL)
	select {
	case r := <-done:
		if !strings.HasPrefix(r, "1 ") || !strings.Contains(r, "closed the connection before the outcome") {
			t.Errorf("reload when prefork is killed: %q; want exit 1", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the reload client still waits after prefork was killed")
	}
	in.wait(10 * time.Second)
}

// stop --timeout: a worker that ignores the stop signal outlasts the wait; the
// client exits 3 and prefork still stops after --grace.
func TestControlStopTimeout(t *testing.T) {
	sock := ctlSock(t)
	in := startPrefork(t, "http", []string{"TESTWORKER_IGNORE_TERM=1"}, "-l", "127.0.0.1:0", "-n", "1",
		"--control", sock, "--grace", "2s")
	in.readyWorkers(1, 10*time.Second)
	code, _, errs := ctlCall(sock, "stop", "--timeout", "300ms")
	if code != exitTimeout || !strings.Contains(errs, "still runs") {
		t.Errorf("stop --timeout 300ms with a worker ignoring TERM: exit %d %q; want %d", code, errs, exitTimeout)
	}
	if code := in.wait(10 * time.Second); code != 0 {
		t.Errorf("prefork exited %d, want 0", code)
	}
}

// Each command's usage line in --help names exactly the arguments the client
// takes for it.
func TestCtlUsageLines(t *testing.T) {
	for _, c := range ctlCommands {
		want := c.name
		if c.workers {
			want += " N"
		}
		if c.json {
			want += " [--json]"
		}
		if c.timeout {
			want += " [--timeout DUR]"
		}
		if c.usage != want {
			t.Errorf("%s: usage %q, but it takes %q", c.name, c.usage, want)
		}
	}
}
