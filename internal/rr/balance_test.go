//go:build linux || darwin

// This file tests the policies: on a fake View (the choice alone), and through
// the dispatcher with real sockets (Least's back-off from a worker that stops
// acking, Source's slots, waiting for a slot's worker and giving up on it).
package rr

import (
	"net"
	"runtime"
	"testing"
	"time"
)

// fakeView is a View over plain slices.
type fakeView struct {
	inflight []int
	eligible []bool
	slots    []int
	nslots   int
	key      uint32
	keyed    bool
	late     bool
}

func (v *fakeView) Len() int            { return len(v.inflight) }
func (v *fakeView) Eligible(i int) bool { return v.eligible[i] }
func (v *fakeView) Inflight(i int) int  { return v.inflight[i] }
func (v *fakeView) Listener() uint32    { return 0 }
func (v *fakeView) Slot(i int) int      { return v.slots[i] }
func (v *fakeView) Slots() int          { return v.nslots }
func (v *fakeView) Key() (uint32, bool) { return v.key, v.keyed }
func (v *fakeView) Late() bool          { return v.late }

func TestLeastPick(t *testing.T) {
	v := &fakeView{inflight: []int{0, 0, 0}, eligible: []bool{true, true, true}}
	l := &Least{}
	// Even load (every worker acks before the next connection): strict turns.
	var got []int
	for i := 0; i < 6; i++ {
		k := l.Pick(v)
		got = append(got, k)
		l.Handed(k, 3)
	}
	if !equalInts(got, []int{0, 1, 2, 0, 1, 2}) {
		t.Fatalf("even load went to %v, want strict turns", got)
	}
	// Nothing acked: it fills up evenly, in turn.
	got = got[:0]
	for i := 0; i < 6; i++ {
		k := l.Pick(v)
		got = append(got, k)
		v.inflight[k]++
		l.Handed(k, 3)
	}
	if !equalInts(got, []int{0, 1, 2, 0, 1, 2}) {
		t.Fatalf("filling went to %v, want turns", got)
	}
	// Worker 1 acked everything, 0 and 2 nothing: 1 until it has as many.
	v.inflight = []int{5, 0, 5}
	got = got[:0]
	for i := 0; i < 4; i++ {
		k := l.Pick(v)
		got = append(got, k)
		v.inflight[k]++
		l.Handed(k, 3)
	}
	if !equalInts(got, []int{1, 1, 1, 1}) {
		t.Fatalf("got %v, want the idle worker 1 every time", got)
	}
	v.eligible[1] = false
	if k := l.Pick(v); k == 1 || k < 0 {
		t.Fatalf("picked %d with worker 1 not eligible", k)
	}
	v.eligible = []bool{false, false, false}
	if k := l.Pick(v); k != -1 {
		t.Fatalf("picked %d with no worker eligible", k)
	}
}

func TestSourcePick(t *testing.T) {
	// Workers 0..3 serve slots 1, 0, 2, 1 (slot 1: an old one and its replacement).
	v := &fakeView{inflight: []int{0, 0, 0, 0}, eligible: []bool{false, true, true, true},
		slots: []int{1, 0, 2, 1}, nslots: 3, keyed: true}
	s := &Source{}
	for key, want := range map[uint32]int{0: 1, 3: 1, 1: 3, 4: 3, 2: 2, 0xffffffff: 1} {
		v.key = key
		if k := s.Pick(v); k != want {
			t.Errorf("key %#x: worker %d, want %d (slot %d)", key, k, want, key%3)
		}
	}
	v.eligible[2] = false
	v.key = 2
	if k := s.Pick(v); k != -1 {
		t.Errorf("slot 2 has no eligible worker: picked %d, want -1 (wait)", k)
	}
	v.late = true
	if k := s.Pick(v); k < 0 || k == 2 {
		t.Errorf("late: picked %d, want any eligible worker", k)
	}
	v.late, v.keyed = false, false
	if k := s.Pick(v); k < 0 {
		t.Errorf("no key: picked %d, want any eligible worker", k)
	}
}

func TestSourceKey(t *testing.T) {
	for _, tc := range []struct {
		ip   string
		want uint32
	}{
		{"127.0.0.2", 0x7f000002},
		{"::ffff:10.1.2.3", 0x0a010203}, // v4-mapped is its IPv4 address
		{"2001:db8::1:2", 0x00010002},
	} {
		ip := net.ParseIP(tc.ip)
		if ip4 := ip.To4(); ip4 != nil && len(tc.ip) < 16 {
			ip = ip4
		}
		if got := SourceKey(ip); got != tc.want {
			t.Errorf("SourceKey(%s) = %#x, want %#x", tc.ip, got, tc.want)
		}
	}
}

func TestLeastSkipsWorkerThatStopsAcking(t *testing.T) {
	f := newRRFixture(t, 1, 8) // Least is the default
	a, b := f.worker(211, true), f.worker(212, true)
	// a takes its first connection and never acks (its event loop is busy):
	// b, acking each, gets every other one.
	f.dial(0)
	a.must()
	for i := 0; i < 6; i++ {
		f.dial(0)
		m := b.must()
		b.ack(m.seq)
		f.waitStat(212, "acked", func(s WorkerStats) bool { return s.Inflight == 0 })
	}
	a.none()
	if s := f.stat(211); s.Handed != 1 || s.Inflight != 1 {
		t.Fatalf("busy worker: %+v, want 1 handed and in flight", s)
	}
}

// dialFrom connects to addr from the loopback address src.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		if runtime.GOOS == "darwin" {
			t.Skipf("cannot connect from %s (macOS answers only 127.0.0.1 unless aliased): %v", src, err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestSourceSticksToSlot(t *testing.T) {
	f := newRRFixtureWith(t, 1, Config{Window: 8, Balancer: &Source{}, Wait: 400 * time.Millisecond})
	f.d.SetSlots(2)
	w0, w1 := f.worker(220, true), f.worker(221, true)
	f.d.SetSlot(220, 0)
	f.d.SetSlot(221, 1)
	bySlot := map[int]*rrTestWorker{0: w0, 1: w1}
	// 127.0.0.2 and .4 are slot 0, .3 and .5 slot 1, connection after connection.
	for round := 0; round < 3; round++ {
		for i, src := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"} {
			c := dialFrom(t, src, f.addrs[0])
			w := bySlot[i%2]
			m := w.must()
			sameConn(t, c, m.conn, byte('a'+i))
			w.ack(m.seq)
			f.waitStat(w.id, "acked", func(s WorkerStats) bool { return s.Inflight == 0 })
		}
	}
	w0.none()
	w1.none()

	// Slot 1's worker goes: its client waits for the replacement, slot 0's
	// clients do not wait behind it.
	w1.close()
	f.d.Detach(221)
	c3 := dialFrom(t, "127.0.0.3", f.addrs[0])
	c2 := dialFrom(t, "127.0.0.2", f.addrs[0])
	m := w0.must()
	sameConn(t, c2, m.conn, 'x')
	w0.ack(m.seq)
	w0.none()
	if n := f.d.Totals().Pending; n != 1 {
		t.Fatalf("%d pending, want the slot 1 client's connection waiting", n)
	}
	w1b := f.worker(222, false)
	f.d.SetSlot(222, 1)
	f.d.Ready(222)
	m = w1b.must()
	sameConn(t, c3, m.conn, 'y')
	w1b.ack(m.seq)

	// A slot whose worker does not come back within Wait: its client goes to
	// another worker rather than wait for ever.
	w1b.close()
	f.d.Detach(222)
	c5 := dialFrom(t, "127.0.0.5", f.addrs[0])
	m = w0.must() // after Wait
	sameConn(t, c5, m.conn, 'z')
}
