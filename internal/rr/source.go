//go:build linux || darwin

// This file holds the source policy (--balance source): the client's
// address picks the slot, so a client stays with one slot's worker across its
// connections and across that slot's restarts (the key is the slot, not the
// pid), which is what socket.io's polling transport and any in-process session
// store need.
package rr

import (
	"encoding/binary"
	"syscall"
	"unsafe"
)

// Source sends a connection to the worker of slot key % Slots, where key is
// the client's IPv4 address as a big-endian number, or the last 32 bits of
// its IPv6 address (an IPv4-mapped address is thus its IPv4 address): the same
// function the kernel runs for reuseport mode (internal/sock's CBPF program),
// so a client lands on the same slot in either mode. While that slot has no
// eligible worker (restarting, or full) the connection waits for it; one
// that waited too long (View.Late), and one with no address (a unix socket's
// client), goes to the least busy worker instead.
type Source struct{ Least }

func (s *Source) Pick(v View) int {
	key, ok := v.Key()
	n := v.Slots()
	if !ok || n <= 0 || v.Late() {
		return s.Least.Pick(v)
	}
	want := int(key % uint32(n))
	for i := 0; i < v.Len(); i++ {
		if v.Slot(i) == want && v.Eligible(i) {
			return i
		}
	}
	return -1
}

// Key reads the client's address of connection conn.
func (*Source) Key(conn int) (uint32, bool) { return peerKey(conn) }

// SourceKey is the key of a client address given as its 4 or 16 bytes, as
// Source reads it from a connection.
func SourceKey(ip []byte) uint32 {
	if len(ip) < 4 {
		return 0
	}
	return binary.BigEndian.Uint32(ip[len(ip)-4:])
}

// peerKey is SourceKey of conn's peer, read with a raw getpeername into a
// buffer on the stack: nothing allocated.
func peerKey(conn int) (uint32, bool) {
	var rsa syscall.RawSockaddrAny
	n := uint32(syscall.SizeofSockaddrAny)
	_, _, e := syscall.RawSyscall(syscall.SYS_GETPEERNAME, uintptr(conn), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&n)))
	if e != 0 {
		return 0, false
	}
	switch rsa.Addr.Family {
	case syscall.AF_INET:
		return SourceKey((*syscall.RawSockaddrInet4)(unsafe.Pointer(&rsa)).Addr[:]), true
	case syscall.AF_INET6:
		return SourceKey((*syscall.RawSockaddrInet6)(unsafe.Pointer(&rsa)).Addr[:]), true
	}
	return 0, false
}
