//go:build unix

// Package rrwire is the wire format of prefork's rr mode (README: The rr handoff protocol), written
// once for prefork, the worker package and the test workers: the 8-byte
// handoff message with its one descriptor, the 4-byte acks, and the socket
// pair they travel on. Nothing in it allocates per message.
//
//	prefork → worker: uint32 sequence number, uint32 listener index, both
//	                  big-endian, one descriptor in SCM_RIGHTS
//	worker → prefork: uint32 sequence numbers, big-endian, one or more per message
package rrwire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"unsafe"
)

const (
	MsgLen = 8 // bytes of a handoff message
	AckLen = 4 // bytes of one ack
)

// RightsSpace is the control-message room for one descriptor; OOBSpace is
// room enough to receive a message that carries a few (a peer that breaks the
// protocol), so that they are noticed and closed rather than truncated.
var (
	RightsSpace = syscall.CmsgSpace(4)
	OOBSpace    = syscall.CmsgSpace(4 * 4)
)

// ErrClosed is the empty message that says the peer closed its end.
var ErrClosed = errors.New("handoff channel closed by the peer")

// Put writes a handoff message for seq and listener index into b.
func Put(b *[MsgLen]byte, seq, index uint32) {
	binary.BigEndian.PutUint32(b[0:], seq)
	binary.BigEndian.PutUint32(b[4:], index)
}

// PutAck writes the ack of seq into b.
func PutAck(b []byte, seq uint32) {
	binary.BigEndian.PutUint32(b, seq)
}

// ParseAcks appends to dst the sequence numbers of one ack message; a message
// that is empty or not a multiple of 4 bytes is an error.
func ParseAcks(b []byte, dst []uint32) ([]uint32, error) {
	if len(b) == 0 || len(b)%AckLen != 0 {
		return dst, fmt.Errorf("ack message of %d bytes, not a positive multiple of %d", len(b), AckLen)
	}
	for ; len(b) > 0; b = b[AckLen:] {
		dst = append(dst, binary.BigEndian.Uint32(b))
	}
	return dst, nil
}

// Parse checks one received handoff message (p and oob as read, flags from
// recvmsg): 8 bytes and exactly one descriptor. An empty message without
// descriptors is ErrClosed. Every descriptor of a bad message is closed.
func Parse(p, oob []byte, flags int) (seq, index uint32, fd int, err error) {
	var buf [4]int
	fds := Rights(oob, buf[:0])
	switch {
	case len(p) == 0 && len(fds) == 0:
		return 0, 0, -1, ErrClosed
	case flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0, len(p) != MsgLen, len(fds) != 1:
		CloseRights(oob)
		return 0, 0, -1, fmt.Errorf("bad handoff message: %d bytes, %d descriptors", len(p), len(fds))
	}
	return binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:]), fds[0], nil
}

// Rights appends to dst the descriptors of every SCM_RIGHTS message in oob,
// without allocating while dst has room.
func Rights(oob []byte, dst []int) []int {
	hdr := syscall.CmsgLen(0)
	for len(oob) >= hdr {
		l, level, typ := cmsgHeader(oob)
		if l < hdr || l > len(oob) {
			break
		}
		if level == syscall.SOL_SOCKET && typ == syscall.SCM_RIGHTS {
			for d := oob[hdr:l]; len(d) >= 4; d = d[4:] {
				dst = append(dst, int(int32(binary.NativeEndian.Uint32(d))))
			}
		}
		next := syscall.CmsgSpace(l - hdr)
		if next >= len(oob) {
			break
		}
		oob = oob[next:]
	}
	return dst
}

// cmsgHeader reads a control message header from b (at least CmsgLen(0)
// bytes), which need not be aligned.
func cmsgHeader(b []byte) (length int, level, typ int32) {
	var h syscall.Cmsghdr
	if unsafe.Sizeof(h.Len) == 8 {
		length = int(min(binary.NativeEndian.Uint64(b), 1<<31))
	} else {
		length = int(binary.NativeEndian.Uint32(b))
	}
	level = int32(binary.NativeEndian.Uint32(b[unsafe.Offsetof(h.Level):]))
	typ = int32(binary.NativeEndian.Uint32(b[unsafe.Offsetof(h.Type):]))
	return length, level, typ
}

// CloseRights closes every descriptor carried by a control message.
func CloseRights(oob []byte) {
	var buf [8]int
	for _, fd := range Rights(oob, buf[:0]) {
		syscall.Close(fd)
	}
}

// rightsHeader is the SCM_RIGHTS header for one descriptor; PutRight copies it
// and writes the descriptor after it, so a send allocates nothing.
var rightsHeader = syscall.UnixRights(0)[:syscall.CmsgLen(0)]

// PutRight writes into oob (RightsSpace bytes at least, zero past the
// header and descriptor) the SCM_RIGHTS control message that carries fd, and
// returns it.
func PutRight(oob []byte, fd int) []byte {
	copy(oob, rightsHeader)
	binary.NativeEndian.PutUint32(oob[len(rightsHeader):], uint32(fd))
	return oob[:RightsSpace]
}

// SendAcks writes one ack message (a multiple of 4 bytes).
func SendAcks(ch int, acks []byte) error {
	for {
		_, err := syscall.Write(ch, acks)
		if err != syscall.EINTR {
			return err
		}
	}
}
