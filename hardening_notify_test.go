//go:build linux || darwin

// This file tests that notifications count only from a worker's own process
// group (issue 9.3).
package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pw "github.com/prefork/prefork/worker"
)

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
	if st, _ := in.readStatus(); len(st.Workers) != 1 || st.Workers[0].State != "starting" || st.Workers[0].Status != "" {
		t.Fatalf("after READY=1 from outside its process group the worker is %+v; want it starting, with no status", st.Workers)
	}
	if err := os.WriteFile(goFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	in.readyWorkers(1, 10*time.Second) // the worker's own child counts
	in.waitLog("ignored a notification from outside the worker's process group", 5*time.Second)
}

// A notification longer than the 4096 bytes prefork reads is dropped whole,
// as systemd drops it, and said: cut short, it could lose its READY=1 or
// deliver half a STATUS=.
func TestNotifyTooLongIsDropped(t *testing.T) {
	d, err := newNotifyDir(-1, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer d.remove()
	d.log = testLogger(t)
	ns, err := d.open(0)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan map[string]string, 4)
	go ns.read(os.Getpid(), func(m map[string]string) { got <- m })
	defer ns.close()
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: ns.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("STATUS=" + strings.Repeat("A", 5000) + "\nREADY=1"))
	c.Write([]byte("STATUS=short"))
	select {
	case m := <-got:
		if len(m) != 1 || m["STATUS"] != "short" {
			t.Fatalf("first notification delivered: %d keys, STATUS of %d bytes; want only the short one", len(m), len(m["STATUS"]))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing delivered")
	}
}
