// This file tests procstat_linux.go against real processes and sockets.
package procstat

import (
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/prefork/prefork/internal/testfd"
)

// startGroup runs a shell script as the leader of its own process group.
func startGroup(t *testing.T, script string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	return cmd
}

func TestGroupUsageCountsEveryProcessOfTheGroup(t *testing.T) {
	a := startGroup(t, "sleep 30 & sleep 30 & wait")
	b := startGroup(t, "while :; do :; done")
	deadline := time.Now().Add(5 * time.Second)
	for {
		u, err := GroupUsage([]int{a.Process.Pid, b.Process.Pid, 1 << 30}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ua, ub := u[a.Process.Pid], u[b.Process.Pid]
		if _, ok := u[1<<30]; ok {
			t.Fatalf("a group with no process is in the map: %+v", u)
		}
		if ua.Procs == 3 && ub.Procs == 1 && ub.CPU >= 200*time.Millisecond {
			if ua.RSS <= 0 || ub.RSS <= 0 {
				t.Fatalf("no resident memory: %+v %+v", ua, ub)
			}
			if ua.CPU > ub.CPU {
				t.Fatalf("sleeping group used more CPU than the busy one: %+v %+v", ua, ub)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sleeping group %+v (want 3 processes), busy group %+v (want 1 process, >= 200ms CPU)", ua, ub)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestGroupUsageAllocatesNothingPerProcess: the pool samples every second for
// as long as prefork runs, so what a pass allocates must not grow with the
// number of processes on the machine (it used to be 20 KB a second).
func TestGroupUsageAllocatesNothingPerProcess(t *testing.T) {
	a := startGroup(t, "sleep 30 & sleep 30 & wait")
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]Usage{}
	allocs := testing.AllocsPerRun(20, func() {
		if u, err := GroupUsage([]int{a.Process.Pid}, out); err != nil || u[a.Process.Pid].Procs == 0 {
			t.Fatalf("groupUsage: %v, %v", u, err)
		}
	})
	if allocs > 2 {
		t.Fatalf("a pass over /proc (%d entries) made %.0f allocations", len(ents), allocs)
	}
}

func TestGroupUsageEmpty(t *testing.T) {
	u, err := GroupUsage(nil, nil)
	if err != nil || len(u) != 0 {
		t.Fatalf("groupUsage(nil) = %v, %v", u, err)
	}
}

func TestParseProcStat(t *testing.T) {
	line := "4242 (a) b) (c) S 1 4240 4240 0 -1 4194560 100 0 0 0 7 5 3 1 20 0 1 0 123 1000000 321 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0\n"
	st, ok := parseProcStat([]byte(line))
	if !ok || st.pgrp != 4240 || st.ticks != 16 || st.rssPages != 321 {
		t.Fatalf("parseProcStat = %+v, %v", st, ok)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1 notanumber 0", "1 (x) S 1 2 3"} {
		if _, ok := parseProcStat([]byte(bad)); ok {
			t.Errorf("parseProcStat(%q) succeeded", bad)
		}
	}
}

func TestClockTick(t *testing.T) {
	if d := clockTick(); d != 10*time.Millisecond {
		t.Logf("clock tick %v (not the usual 100 Hz)", d)
	}
	if d := clockTick(); d <= 0 || d > time.Second {
		t.Fatalf("clock tick %v", d)
	}
}

func TestAcceptQueueCountsUnacceptedConnections(t *testing.T) {
	fd, addr := rawTCPListener(t)
	if q, limit, err := acceptQueueInfo(fd); err != nil || q != 0 || limit != 128 {
		t.Fatalf("empty listener: queue %d, limit %d, err %v (want 0, 128)", q, limit, err)
	}
	for i := 1; i <= 3; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if q, err := AcceptQueue(fd); err != nil || q != i {
			t.Fatalf("after %d connections: queue %d, err %v", i, q, err)
		}
	}
	nfd, _, err := syscall.Accept(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(nfd)
	if q, err := AcceptQueue(fd); err != nil || q != 2 {
		t.Fatalf("after one accept: queue %d, err %v (want 2)", q, err)
	}
	if _, err := AcceptQueue(nfd); err != errNotListener {
		t.Fatalf("a connected socket: err %v, want errNotListener", err)
	}
}

func TestAcceptQueueRefusesNonTCP(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fds[0])
	defer syscall.Close(fds[1])
	if _, err := AcceptQueue(fds[0]); err == nil {
		t.Fatal("acceptQueue on a unix socket succeeded")
	}
}

func TestAcceptQueueOfAUnixListener(t *testing.T) {
	path := t.TempDir() + "/s"
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, err := l.(*net.UnixListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	if q, _, err := acceptQueueInfo(fd); err != nil || q != 0 {
		t.Fatalf("empty unix listener: queue %d, err %v", q, err)
	}
	for i := 1; i <= 3; i++ {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if q, err := AcceptQueue(fd); err != nil || q != i {
			t.Fatalf("after %d connections: queue %d, err %v", i, q, err)
		}
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cf, _ := c.(*net.UnixConn).File()
	defer cf.Close()
	if _, err := AcceptQueue(int(cf.Fd())); err == nil {
		t.Fatal("acceptQueue on a connected unix socket succeeded")
	}
}

func TestAcceptQueueRefusesUDP(t *testing.T) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f, _ := c.(*net.UDPConn).File()
	defer f.Close()
	if _, err := AcceptQueue(int(f.Fd())); err != errNotListener {
		t.Fatalf("UDP socket: err %v, want errNotListener", err)
	}
}

// rawTCPListener is the shared fixture (internal/testfd).
var rawTCPListener = testfd.TCPListener
