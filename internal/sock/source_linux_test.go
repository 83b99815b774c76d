// This file tests the reuseport source program with real sockets: clients
// from distinct loopback addresses reach the socket at key % n of the group,
// in the order the sockets joined it, over IPv4, IPv6 and dual-stack, after a
// re-attach for another n, and after the last socket left.
package sock

import (
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"
)

// sourceGroup binds a listener on addr and n-1 more SO_REUSEPORT sockets on
// its address, as reuseport mode does for n slots.
func sourceGroup(t *testing.T, addr string, n int) (*Listener, []int) {
	t.Helper()
	ls, err := Bind(lstSpecs(t, addr), 0, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Close(ls...) })
	fds := []int{ls[0].FD}
	for i := 1; i < n; i++ {
		fd, err := ls[0].ReuseportSocket(0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Close(fd) })
		fds = append(fds, fd)
	}
	return ls[0], fds
}

// landsOn connects from src to addr and returns the index in fds of the
// socket whose queue the connection is in (-1: none within 5 s).
func landsOn(t *testing.T, fds []int, network, src, addr string) int {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, fd := range fds {
		syscall.SetNonblock(fd, true)
	}
	defer func() {
		for _, fd := range fds {
			syscall.SetNonblock(fd, false)
		}
	}()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		for i, fd := range fds {
			if nfd, _, err := syscall.Accept(fd); err == nil {
				syscall.Close(nfd)
				return i
			}
		}
	}
	return -1
}

func TestSourceBalanceIPv4(t *testing.T) {
	l, fds := sourceGroup(t, "127.0.0.1:0", 3)
	addr := fmt.Sprintf("127.0.0.1:%d", lstPort(t, l.Bound()))
	if err := AttachSourceBalance(l.FD, 3); err != nil {
		t.Fatal(err)
	}
	check := func(n int, fds []int) {
		t.Helper()
		for round := 0; round < 2; round++ {
			for host := 2; host < 2+2*n; host++ {
				src := fmt.Sprintf("127.0.0.%d", host)
				if got, want := landsOn(t, fds, "tcp4", src, addr), int((0x7f000000+uint32(host))%uint32(n)); got != want {
					t.Fatalf("%d sockets: a client from %s reached socket %d, want %d (0x7f0000%02x %% %d)", n, src, got, want, host, n)
				}
			}
		}
	}
	check(3, fds)
	// The last socket leaves the group (a slot removed): the program for 2
	// keeps the others in place.
	syscall.Close(fds[2])
	if err := AttachSourceBalance(fds[1], 2); err != nil { // any socket of the group will do
		t.Fatal(err)
	}
	check(2, fds[:2])
	// One more joins at the end, as a new slot's socket does.
	fd, err := l.ReuseportSocket(0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := AttachSourceBalance(l.FD, 3); err != nil {
		t.Fatal(err)
	}
	check(3, []int{fds[0], fds[1], fd})
}

func TestSourceBalanceDualStackAndIPv6(t *testing.T) {
	l, fds := sourceGroup(t, ":0", 2)
	if l.Bound()[0] != '[' {
		t.Skipf("no IPv6 here: bound %s", l.Bound())
	}
	if err := AttachSourceBalance(l.FD, 2); err != nil {
		t.Fatal(err)
	}
	port := lstPort(t, l.Bound())
	for _, host := range []int{2, 3, 4, 5} { // IPv4 clients of a dual-stack group: their IPv4 address
		src := fmt.Sprintf("127.0.0.%d", host)
		if got := landsOn(t, fds, "tcp4", src, fmt.Sprintf("127.0.0.1:%d", port)); got != host%2 {
			t.Errorf("client %s reached socket %d, want %d", src, got, host%2)
		}
	}
	if got := landsOn(t, fds, "tcp6", "::1", fmt.Sprintf("[::1]:%d", port)); got != 1 { // ::1's last word is 1
		t.Errorf("client ::1 reached socket %d, want 1", got)
	}
	if err := AttachSourceBalance(l.FD, 0); err == nil {
		t.Error("a program over 0 sockets was accepted")
	}
}
