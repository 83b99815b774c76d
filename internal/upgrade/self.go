//go:build linux || darwin

// This file holds what the running image needs of itself and of the new
// binary around the exec: its own binary kept open, the words for a new
// binary that cannot be started, the inherited sockets taken into Go's
// poller, and the state's consistency.
package upgrade

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
)

// Self is what an upgrade executes: the path prefork was started from, and
// the binary this image runs, kept open for the way back.
type Self struct {
	Path string // os.Executable at the first start
	FD   int    // close-on-exec but during the exec; -1 when it could not be opened
	Err  error  // why not
}

// OpenSelfAt opens this image's binary; path is the one a first start takes
// (os.Executable) when "".
func OpenSelfAt(path string) Self {
	b := Self{Path: path, FD: -1}
	if path == "" {
		b.Path, b.Err = os.Executable()
	}
	if b.Err == nil {
		b.FD, b.Err = OpenSelf()
	}
	return b
}

func (b Self) Close() {
	if b.FD >= 0 {
		syscall.Close(b.FD)
	}
}

// ExplainStart says why the new binary at path could not be started.
func ExplainStart(path string, err error) string {
	switch {
	case errors.Is(err, syscall.ENOENT):
		return fmt.Sprintf("%s does not exist", path)
	case errors.Is(err, syscall.EACCES):
		return fmt.Sprintf("%s is not executable (permission denied)", path)
	case errors.Is(err, syscall.ENOEXEC):
		return fmt.Sprintf("%s is not a prefork binary (exec format error)", path)
	}
	return fmt.Sprintf("cannot run %s: %v", path, err)
}

// FileConn is a connection of Go's poller on a duplicate of an inherited
// unix socket; the inherited descriptor stays open, for a way back.
func FileConn(fd int, name string) (*net.UnixConn, error) {
	nfd, err := syscall.Dup(fd)
	if err != nil {
		return nil, os.NewSyscallError("dup", err)
	}
	f := os.NewFile(uintptr(nfd), name)
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("%s: not a unix socket", name)
	}
	return uc, nil
}

// Check refuses a state whose slots and workers do not fit together:
// slots numbered in order, in reuseport mode one socket per listener each,
// at most one worker in a slot.
func (st *State) Check(reuseport bool) error {
	if len(st.Slots) == 0 {
		return errors.New("the state has no slots")
	}
	for i, sl := range st.Slots {
		if sl.Index != i {
			return fmt.Errorf("slot %d is listed as slot %d", i, sl.Index)
		}
		if reuseport && len(sl.Socks) != len(st.Listeners) {
			return fmt.Errorf("slot %d has %d sockets for %d listeners", i, len(sl.Socks), len(st.Listeners))
		}
	}
	busy := map[int]bool{}
	for _, w := range st.Procs {
		if w.Slot < 0 || w.Slot >= len(st.Slots) || busy[w.Slot] {
			return fmt.Errorf("worker pid %d: slot %d is not free", w.PID, w.Slot)
		}
		busy[w.Slot] = true
	}
	return nil
}

// BackEnv is the environment of the way back: env with the state's
// descriptors and why the new image hands it back.
func BackEnv(env []string, fd, exeFD int, why string) []string {
	return append(Clean(env), StateEnv+"="+EnvValue(fd, exeFD), RollbackEnv+"="+why)
}
