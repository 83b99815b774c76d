// This file holds --balance source in reuseport mode: a classic BPF program
// on the SO_REUSEPORT group that picks the socket by the client's address, so
// the kernel does at no cost to prefork what the rr dispatcher's Source does
// at accept (internal/rr/source.go): the same key, the same slot.
package sock

import (
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

// SourceBalanceSupported: Linux runs a reuseport group's CBPF program.
const SourceBalanceSupported = true

// Constants the frozen syscall package lacks.
const (
	soAttachReuseportCBPF = 51        // SO_ATTACH_REUSEPORT_CBPF
	skfNetOff             = -0x100000 // SKF_NET_OFF: loads relative to the network header
	bpfMod                = 0x90      // BPF_MOD
)

// sourceProgram returns the program for a group of n sockets: the version
// nibble of the IP header says where the source address is; its last 32 bits
// (an IPv4 address, or the last word of an IPv6 one), modulo n, is the index
// of the socket in the group.
func sourceProgram(n int) []syscall.SockFilter {
	net := func(off int) uint32 { return uint32(int32(skfNetOff + off)) }
	return []syscall.SockFilter{
		{Code: syscall.BPF_LD | syscall.BPF_B | syscall.BPF_ABS, K: net(0)},    // 0: A = version<<4 | ihl
		{Code: syscall.BPF_ALU | syscall.BPF_RSH | syscall.BPF_K, K: 4},        // 1: A = version
		{Code: syscall.BPF_JMP | syscall.BPF_JEQ | syscall.BPF_K, K: 6, Jt: 2}, // 2: IPv6? to 5
		{Code: syscall.BPF_LD | syscall.BPF_W | syscall.BPF_ABS, K: net(12)},   // 3: IPv4 source address
		{Code: syscall.BPF_JMP | syscall.BPF_JA, K: 1},                         // 4: to 6
		{Code: syscall.BPF_LD | syscall.BPF_W | syscall.BPF_ABS, K: net(20)},   // 5: last word of the IPv6 source
		{Code: syscall.BPF_ALU | bpfMod | syscall.BPF_K, K: uint32(n)},         // 6: A %= n
		{Code: syscall.BPF_RET | syscall.BPF_A},                                // 7: the socket's index
	}
}

// AttachSourceBalance makes the kernel hand each connection (or datagram)
// of fd's SO_REUSEPORT group to the socket at index key % n in the group,
// key being the client's address as internal/rr's SourceKey reads it. The
// index is the socket's place in the group, which is the order the sockets
// started listening (bound, for UDP) as long as only the last one ever leaves
// it: the kernel moves the last socket into the place of one that leaves. A
// new call replaces the program (when n changes). An index beyond the group's
// sockets falls back to the kernel's hash.
func AttachSourceBalance(fd, n int) error {
	if n < 1 {
		return fmt.Errorf("source balance over %d sockets", n)
	}
	prog := sourceProgram(n)
	fp := syscall.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	_, _, e := syscall.Syscall6(syscall.SYS_SETSOCKOPT, uintptr(fd), syscall.SOL_SOCKET, soAttachReuseportCBPF,
		uintptr(unsafe.Pointer(&fp)), unsafe.Sizeof(fp), 0)
	if e != 0 {
		return os.NewSyscallError("setsockopt SO_ATTACH_REUSEPORT_CBPF", e)
	}
	return nil
}
