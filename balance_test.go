//go:build linux || darwin

// This file tests --balance with real prefork processes and a real §4 worker
// (the "balance" role: one connection at a time, as an event loop serves
// them, acking each connection as it takes it): least keeps off a worker that
// is busy, and spreads an even load exactly; source keeps each client address
// on its slot, in rr and reuseport mode, across a worker's SIGKILL and a
// slot's removal and return, where roundrobin and the kernel's hash spread it.
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prefork/prefork/internal/rr"
	"github.com/prefork/prefork/internal/rrwire"
	pw "github.com/prefork/prefork/worker"
)

func init() { extraRoles["balance"] = balanceWorker }

// balanceWorker serves one connection at a time: in rr mode the handoffs on
// fd 3, acked as it takes each; otherwise it accepts on fd 3. It answers
// "SLOT PID"; GET /busy first spins the CPU for BALANCE_BUSY (its loop is
// busy). With BALANCE_LINGER set, SIGTERM makes it stop accepting but stay
// (a worker draining long connections).
func balanceWorker() int {
	time.AfterFunc(120*time.Second, func() { os.Exit(4) }) // watchdog
	busy, _ := time.ParseDuration(os.Getenv("BALANCE_BUSY"))
	answer := fmt.Sprintf("%s %d\n", os.Getenv("PREFORK_WORKER"), os.Getpid())
	var linger atomic.Bool
	if os.Getenv("BALANCE_LINGER") != "" {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM)
		go func() { <-sig; linger.Store(true) }()
	}
	rrMode := os.Getenv("PREFORK_MODE") == "rr"
	if !rrMode {
		syscall.SetNonblock(3, true) // so that a lingering worker can stop accepting
	}
	pw.Ready()
	p, oob := make([]byte, 64), make([]byte, syscall.CmsgSpace(4))
	for {
		conn := -1
		if rrMode {
			n, oobn, flags, err := rrwire.Recv(3, p, oob, false)
			if err == syscall.EINTR {
				continue
			}
			if err != nil || n == 0 {
				return 0 // prefork is gone
			}
			seq, _, fd, err := rrwire.Parse(p[:n], oob[:oobn], flags)
			if err != nil {
				return 3
			}
			var ack [4]byte
			rrwire.PutAck(ack[:], seq)
			if err := rrwire.SendAcks(3, ack[:]); err != nil {
				return 3
			}
			conn = fd
		} else {
			if linger.Load() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			fd, _, err := syscall.Accept(3)
			if err != nil {
				time.Sleep(2 * time.Millisecond) // EAGAIN: nothing queued
				continue
			}
			syscall.SetNonblock(fd, false)
			conn = fd
		}
		serveBalance(conn, answer, busy)
	}
}

func serveBalance(fd int, answer string, busy time.Duration) {
	c := os.NewFile(uintptr(fd), "conn")
	defer c.Close()
	req, err := http.ReadRequest(bufio.NewReader(c))
	if err != nil {
		return
	}
	if req.URL.Path == "/busy" {
		for t0 := time.Now(); time.Since(t0) < busy; {
		}
	}
	fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(answer), answer)
}

// balanceGet asks path from a client bound to src ("" for any) and returns
// the slot and pid that answered.
func balanceGet(src, addr, path string) (slot, pid int, err error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.0\r\n\r\n", path)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, 0, err
	}
	if _, err := fmt.Sscan(string(b), &slot, &pid); err != nil {
		return 0, 0, fmt.Errorf("answer %q: %v", b, err)
	}
	return slot, pid, nil
}

// startBalance runs prefork with n balance workers on 127.0.0.1.
func startBalance(t *testing.T, n int, env []string, args ...string) (*instance, string) {
	t.Helper()
	args = append([]string{"-l", "127.0.0.1:0", "-n", strconv.Itoa(n), "--ready", "notify", "--grace", "5s"}, args...)
	in := startPrefork(t, "balance", env, args...)
	in.readyWorkers(n, 20*time.Second)
	return in, in.addr()
}

// busyLoad asks busyPath, then, while that worker spins, fast requests
// one after another from as many goroutines, 20 ms apart; it returns the pid
// of the busy worker and how many fast requests each pid answered. get asks
// a path on a new connection and returns the pid that answered.
func busyLoad(t *testing.T, get func(path string) (int, error), busyPath string, fast int) (busyPID int, byPID map[int]int) {
	t.Helper()
	busyDone := make(chan error, 1)
	var busy atomic.Int64
	go func() {
		pid, err := get(busyPath)
		busy.Store(int64(pid))
		busyDone <- err
	}()
	time.Sleep(300 * time.Millisecond) // it is spinning now (2 s or more)
	var mu sync.Mutex
	byPID = map[int]int{}
	var wg sync.WaitGroup
	for i := 0; i < fast; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pid, err := get("/")
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("fast request: %v", err)
			}
			byPID[pid]++
		}()
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	if err := <-busyDone; err != nil {
		t.Fatalf("busy request: %v", err)
	}
	return int(busy.Load()), byPID
}

// balancePID is a busyLoad get for the balance role.
func balancePID(addr string) func(path string) (int, error) {
	return func(path string) (int, error) {
		_, pid, err := balanceGet("", addr, path)
		return pid, err
	}
}

// leastBusyMax is the most fast requests of busyLoad's 20 a busy worker may
// answer under least. It acked the busy one and gets at most one more, which
// it leaves unacked; from then on it has one in flight, and gets another only
// in a tie, when the idle worker has not acked its latest yet either (a loaded
// machine). Strict turns give it 10.
const leastBusyMax = 3

func TestBalanceLeastKeepsOffABusyWorker(t *testing.T) {
	env := []string{"BALANCE_BUSY=3s"}
	in, addr := startBalance(t, 2, env, "--mode", "rr") // least is the default
	busyPID, byPID := busyLoad(t, balancePID(addr), "/busy", 20)
	t.Logf("least: the busy worker answered %d of 20 fast requests (%v)", byPID[busyPID], byPID)
	if byPID[busyPID] > leastBusyMax {
		t.Errorf("least: the busy worker %d answered %d of 20 fast requests, want at most %d (%v)", busyPID, byPID[busyPID], leastBusyMax, byPID)
	}
	st, _ := in.readStatus()
	if st.Balance != "least" {
		t.Errorf("status file balance %q, want least", st.Balance)
	}
	for _, w := range st.Workers {
		if w.RRHanded == nil || w.RRInflight == nil {
			t.Errorf("status file worker %+v has no rr_handed/rr_inflight", w)
		}
	}

	// The same load under roundrobin: the busy worker gets every other one.
	_, addr = startBalance(t, 2, env, "--mode", "rr", "--balance", "roundrobin")
	busyPID, byPID = busyLoad(t, balancePID(addr), "/busy", 20)
	t.Logf("roundrobin: the busy worker answered %d of 20 fast requests (%v)", byPID[busyPID], byPID)
	if byPID[busyPID] < 5 {
		t.Errorf("roundrobin: the busy worker %d answered %d of 20, want about half (%v)", busyPID, byPID[busyPID], byPID)
	}
}

func TestBalanceLeastEvenLoadSpreadsExactly(t *testing.T) {
	_, addr := startBalance(t, 3, nil, "--mode", "rr", "--balance", "least")
	bySlot := map[int]int{}
	for i := 0; i < 30; i++ {
		slot, _, err := balanceGet("", addr, "/")
		if err != nil {
			t.Fatal(err)
		}
		bySlot[slot]++
	}
	if bySlot[0] != 10 || bySlot[1] != 10 || bySlot[2] != 10 {
		t.Errorf("one request at a time went %v, want 10 to each slot", bySlot)
	}
}

// sourceSlots asks 3 times from each of 127.0.0.2 to .8 (7: no multiple of
// a slot count, so strict turns cannot keep them in place by chance) and returns the
// slots each source reached.
func sourceSlots(t *testing.T, addr string) map[string]map[int]bool {
	t.Helper()
	got := map[string]map[int]bool{}
	for round := 0; round < 3; round++ {
		for host := 2; host <= 8; host++ {
			src := fmt.Sprintf("127.0.0.%d", host)
			slot, _, err := balanceGet(src, addr, "/")
			if err != nil {
				if runtime.GOOS == "darwin" {
					t.Skipf("cannot connect from %s (macOS answers only 127.0.0.1 unless aliased): %v", src, err)
				}
				t.Fatal(err)
			}
			if got[src] == nil {
				got[src] = map[int]bool{}
			}
			got[src][slot] = true
		}
	}
	return got
}

// sourceSlot is the slot --balance source gives a loopback client among n.
func sourceSlot(src string, n int) int {
	return int(rr.SourceKey(net.ParseIP(src).To4()) % uint32(n))
}

// checkSticky fails unless every source reached exactly its own slot.
func checkSticky(t *testing.T, what string, got map[string]map[int]bool, n int) {
	t.Helper()
	for src, slots := range got {
		if want := sourceSlot(src, n); len(slots) != 1 || !slots[want] {
			t.Errorf("%s: client %s reached slots %v, want only slot %d", what, src, slots, want)
		}
	}
}

// spread reports whether some source reached more than one slot.
func spread(got map[string]map[int]bool) bool {
	for _, slots := range got {
		if len(slots) > 1 {
			return true
		}
	}
	return false
}

func TestBalanceSource(t *testing.T) {
	for _, mode := range modes() {
		if mode == "shared" {
			continue
		}
		t.Run(mode, func(t *testing.T) {
			const n = 3
			in, addr := startBalance(t, n, nil, "--mode", mode, "--balance", "source")
			checkSticky(t, "source", sourceSlots(t, addr), n)

			// SIGKILL slot 1's worker: a client of slot 1 asking at once waits
			// for the replacement, and keeps its slot after.
			st, _ := in.readStatus()
			victim := -1
			for _, w := range st.Workers {
				if w.Slot == 1 {
					victim = w.PID
				}
			}
			src := ""
			for host := 2; src == ""; host++ {
				if s := fmt.Sprintf("127.0.0.%d", host); sourceSlot(s, n) == 1 {
					src = s
				}
			}
			syscall.Kill(victim, syscall.SIGKILL)
			slot, pid, err := balanceGet(src, addr, "/")
			if err != nil || slot != 1 || pid == victim {
				t.Errorf("a client of slot 1 while its worker restarts: slot %d pid %d (%v), want slot 1's replacement of %d", slot, pid, err, victim)
			}
			in.waitFor("slot 1 replaced", 20*time.Second, readyWhere(n, func(w workerStatus) bool { return w.PID != victim }))
			checkSticky(t, "source after a SIGKILL", sourceSlots(t, addr), n)

			// The same clients under roundrobin (rr) or the kernel's hash
			// (reuseport) spread over the slots.
			var args []string
			if mode == "rr" {
				args = []string{"--balance", "roundrobin"}
			}
			_, addr = startBalance(t, n, nil, append([]string{"--mode", mode}, args...)...)
			if got := sourceSlots(t, addr); !spread(got) {
				t.Errorf("without source every client stayed on one slot: %v", got)
			}
		})
	}
}

// Scale down, then up again while the removed slot's worker still drains:
// the new slot takes the old one's place in the reuseport group (its sockets),
// so its clients reach it rather than the socket nobody accepts on.
func TestBalanceSourceReuseportScaleDownUp(t *testing.T) {
	if !reuseportSupported {
		t.Skip("reuseport mode is Linux only")
	}
	in, addr := startBalance(t, 2, []string{"BALANCE_LINGER=1"}, "--mode", "reuseport", "--balance", "source", "--grace", "30s")
	st, _ := in.readStatus()
	old := -1
	for _, w := range st.Workers {
		if w.Slot == 1 {
			old = w.PID
		}
	}
	in.signal(syscall.SIGTTOU)
	in.waitFor("slot 1 stopping", 10*time.Second, func(st statusFile) bool {
		for _, w := range st.Workers {
			if w.PID == old {
				return w.State == "stopping"
			}
		}
		return false
	})
	checkSticky(t, "1 slot", sourceSlots(t, addr), 1)
	in.signal(syscall.SIGTTIN)
	in.waitFor("a new slot 1", 10*time.Second, func(st statusFile) bool {
		for _, w := range st.Workers {
			if w.Slot == 1 && w.PID != old && w.State == "ready" {
				return true
			}
		}
		return false
	})
	checkSticky(t, "2 slots again", sourceSlots(t, addr), 2)
	syscall.Kill(old, syscall.SIGKILL)
}

func TestBalanceUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--balance", "least"}, "--balance does not apply to --mode shared"},
		{[]string{"--mode", "shared", "--balance", "source"}, "--balance does not apply to --mode shared"},
		{[]string{"--mode", "reuseport", "--balance", "roundrobin"}, "needs --mode rr"},
		{[]string{"--mode", "rr", "--balance", "fewest"}, `"fewest" is not one of least, roundrobin, source`},
	} {
		var out, errb strings.Builder
		code := run(append(append([]string{"-p", "0"}, tc.args...), "true"), &out, &errb)
		if code != exitUsage || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, %q; want %d and %q", tc.args, code, errb.String(), exitUsage, tc.want)
		}
	}
	_, err := parseArgs([]string{"-p", "0", "--mode", "reuseport", "--balance", "source", "true"})
	if reuseportSupported && err != nil {
		t.Errorf("reuseport --balance source refused on Linux: %v", err)
	}
	if !reuseportSupported {
		var out, errb strings.Builder
		code := run([]string{"-p", "0", "--mode", "reuseport", "--balance", "source", "true"}, &out, &errb)
		if code != exitUsage || !strings.Contains(errb.String(), "--balance source in reuseport mode needs Linux") {
			t.Errorf("reuseport --balance source on macOS: exit %d %q, want a usage error", code, errb.String())
		}
	}
}
