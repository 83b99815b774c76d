package listenwait

import (
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// waiter is a Python process that waits on its fd 3 the way its first argument
// says (child-WAY: its child does, the parent sleeps, as gunicorn's master and
// worker); "sleep" and "other" (accept on a socket of its own) never wait on fd 3.
const waiter = `
import os, select, socket, sys, time
how = sys.argv[1]
s = socket.socket(fileno=3)
if how.startswith('child-'):
    if os.fork() != 0:
        time.sleep(60)
        sys.exit(0)
    how = how[6:]
if how == 'highfd':
    # poll on a descriptor far from 3, among others it does not wait on
    s = socket.socket(fileno=os.dup2(3, 77))
    how = 'poll'
print('waiting', flush=True)
if how == 'accept':
    s.accept()
elif how == 'select':
    select.select([sys.stdin, s], [], [])
elif how == 'poll':
    p = select.poll()
    p.register(sys.stdin, select.POLLIN)
    p.register(s, select.POLLIN)
    p.poll()
elif how == 'epoll':
    e = select.epoll()
    e.register(s, select.EPOLLIN)
    e.poll()
elif how == 'recv':
    s.recvmsg(1, 64)
elif how == 'other':
    o = socket.socket()
    o.bind(('127.0.0.1', 0))
    o.listen()
    o.accept()
else:
    time.sleep(60)
`

func python(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	return p
}

// startWaiter runs the waiter on f, once it has printed that it waits.
func startWaiter(t *testing.T, how string, f *os.File) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(python(t), "-c", waiter, how)
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	in, never, err := os.Pipe() // stdin, never readable: select and poll wait on it too
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); never.Close() })
	cmd.Stdin = in
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	buf := make([]byte, 8)
	if _, err := out.Read(buf); err != nil {
		t.Fatalf("%s: the waiter did not start: %v", how, err)
	}
	return cmd
}

func listener(t *testing.T) (*os.File, Sock) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	s, err := SockOf(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return f, s
}

// seen checks pid until it is seen waiting, for up to 10 s.
func seen(t *testing.T, pid int, socks []Sock) Way {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		way, err := Check(pid, socks)
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		if way != None || time.Now().After(deadline) {
			return way
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCheckSeesEachWayOfWaiting(t *testing.T) {
	if !Supported {
		t.Skip("no /proc/PID/syscall here")
	}
	for how, want := range map[string]Way{
		"accept": Accept, "select": Select, "poll": Poll, "epoll": Epoll, "highfd": Poll,
		"child-accept": Accept, "child-epoll": Epoll, "child-select": Select,
	} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			f, s := listener(t)
			cmd := startWaiter(t, how, f)
			if got := seen(t, cmd.Process.Pid, []Sock{s}); got != want {
				t.Errorf("seen as %q, want %q", got, want)
			}
		})
	}
}

func TestCheckSeesAHandoffChannel(t *testing.T) {
	if !Supported {
		t.Skip("no /proc/PID/syscall here")
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fds[0])
	f := os.NewFile(uintptr(fds[1]), "worker end")
	defer f.Close()
	s, _ := SockOf(fds[1])
	cmd := startWaiter(t, "recv", f)
	if got := seen(t, cmd.Process.Pid, []Sock{s}); got != Receive {
		t.Errorf("seen as %q, want %q", got, Receive)
	}
}

func TestCheckSeesNoOtherWaiting(t *testing.T) {
	if !Supported {
		t.Skip("no /proc/PID/syscall here")
	}
	for _, how := range []string{"sleep", "other", "child-sleep"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			f, s := listener(t)
			cmd := startWaiter(t, how, f)
			time.Sleep(300 * time.Millisecond) // past the print, in its wait
			for range 5 {
				if way, err := Check(cmd.Process.Pid, []Sock{s}); err != nil || way != None {
					t.Fatalf("seen as %q (%v), want not seen", way, err)
				}
				time.Sleep(50 * time.Millisecond)
			}
			// Waiting on another socket is not waiting on this one.
			_, other := listener(t)
			if how == "other" {
				if way, _ := Check(cmd.Process.Pid, []Sock{other}); way != None {
					t.Errorf("seen as %q on a socket it does not have", way)
				}
			}
		})
	}
}

func TestCheckOfAProcessGone(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skip(err)
	}
	if way, err := Check(cmd.Process.Pid, nil); err == nil || way != None {
		t.Errorf("Check of a reaped process: %v, %v; want an error", way, err)
	}
}

func TestWatcherReportsOnceSeen(t *testing.T) {
	if !Supported {
		t.Skip("no /proc/PID/syscall here")
	}
	reports := make(chan Report, 4)
	w := New(reports, func(r Report) Report { return r })
	defer w.Close()
	f, s := listener(t)
	slow := exec.Command(python(t), "-c", "import time; time.sleep(1.5)\n"+waiter, "epoll")
	slow.ExtraFiles = []*os.File{f}
	if err := slow.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { slow.Process.Kill(); slow.Wait() }()
	started := time.Now()
	w.Watch(slow.Process.Pid, []Sock{s})
	forgotten := startWaiter(t, "accept", f)
	w.Watch(forgotten.Process.Pid, []Sock{s})
	w.Forget(forgotten.Process.Pid)
	select {
	case r := <-reports:
		took := time.Since(started)
		if r.PID != slow.Process.Pid || r.Way != Epoll || r.Err != nil {
			t.Fatalf("report %+v, want pid %d seen in epoll", r, slow.Process.Pid)
		}
		if took < 1500*time.Millisecond {
			t.Errorf("seen after %v, before it waited", took)
		}
		t.Logf("a worker that waits after 1.5 s seen after %v", took)
	case <-time.After(15 * time.Second):
		t.Fatal("no report")
	}
	select {
	case r := <-reports:
		t.Errorf("a second report: %+v", r)
	case <-time.After(300 * time.Millisecond):
	}
}

func TestKernelDev(t *testing.T) {
	// stat's encoding (glibc's makedev) to the kernel's (MKDEV) that fdinfo prints.
	for _, c := range []struct{ major, minor, kernel uint64 }{{0, 8, 8}, {0, 300, 300}, {8, 1, 8<<20 | 1}, {259, 70000, 259<<20 | 70000}} {
		dev := c.minor&0xff | (c.major&0xfff)<<8 | (c.minor&^0xff)<<12 | (c.major&^0xfff)<<32
		if got := kernelDev(dev); got != c.kernel {
			t.Errorf("kernelDev(%d:%d) = %#x, want %#x", c.major, c.minor, got, c.kernel)
		}
	}
}

// BenchmarkCheck is the cost of one look at a process that does not wait yet
// (the whole look: threads, descriptors, epoll sets), as while it boots.
func BenchmarkCheck(b *testing.B) {
	p, err := exec.LookPath("python3")
	if err != nil {
		b.Skip("python3 not installed")
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l.Close()
	f, _ := l.(*net.TCPListener).File()
	defer f.Close()
	s, _ := SockOf(int(f.Fd()))
	cmd := exec.Command(p, "-c", "import select, time\ne = select.epoll()\ntime.sleep(60)")
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	time.Sleep(300 * time.Millisecond)
	b.ResetTimer()
	for b.Loop() {
		if way, err := Check(cmd.Process.Pid, []Sock{s}); err != nil || way != None {
			b.Fatal(way, err)
		}
	}
}

// Where the kernel has no /proc/PID/task/TID/children, the family comes from
// one pass over every process's parent.
func TestCheckWithoutChildrenFiles(t *testing.T) {
	if !Supported {
		t.Skip("no /proc/PID/syscall here")
	}
	defer func(was bool) { childrenFiles = was }(childrenFiles)
	childrenFiles = false
	f, s := listener(t)
	cmd := startWaiter(t, "child-epoll", f)
	if got := seen(t, cmd.Process.Pid, []Sock{s}); got != Epoll {
		t.Errorf("seen as %q, want %q", got, Epoll)
	}
}

// Close returns while a report waits for a reader that is gone.
func TestWatcherCloseWhileAReportWaits(t *testing.T) {
	if !Supported {
		t.Skip("no /proc/PID/syscall here")
	}
	reports := make(chan Report) // nobody reads
	w := New(reports, func(r Report) Report { return r })
	f, s := listener(t)
	cmd := startWaiter(t, "accept", f)
	w.Watch(cmd.Process.Pid, []Sock{s})
	time.Sleep(500 * time.Millisecond) // seen, and waiting to say so
	closed := make(chan struct{})
	go func() { w.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited for a report nobody reads")
	}
}
