// This file holds the macOS side of command.go: which files execve runs.
package main

import "encoding/binary"

// execFormatKnown reports whether execve may run a file that starts with head
// and has no #! line: a Mach-O binary, thin or universal, of either byte order.
func execFormatKnown(head []byte) bool {
	if len(head) < 4 {
		return false
	}
	switch binary.BigEndian.Uint32(head) {
	case 0xfeedface, 0xfeedfacf, 0xcefaedfe, 0xcffaedfe, 0xcafebabe, 0xbebafeca:
		return true
	}
	return false
}
