//go:build linux || darwin

// This file holds the sd_notify side of prefork: one datagram socket per worker
// in a directory only prefork and the workers' user can reach, the parser for
// what workers send, and prefork's own notifications to its supervisor.
package main

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	pw "github.com/prefork/prefork/worker"
)

// notifyDir is the private directory that holds the workers' notify sockets.
type notifyDir struct {
	path string
	uid  int // owner of the directory and sockets (-1: prefork's own user)
	gid  int
	seq  atomic.Uint64
	log  *slog.Logger // for datagrams refused; nil: silent
}

func newNotifyDir(uid, gid int) (*notifyDir, error) {
	base := os.Getenv("XDG_RUNTIME_DIR")
	if st, err := os.Stat(base); base == "" || err != nil || !st.IsDir() || uid >= 0 {
		base = os.TempDir()
	}
	dir, err := os.MkdirTemp(base, "prefork.")
	if err != nil {
		return nil, fmt.Errorf("notify socket directory: %w", err)
	}
	if uid >= 0 {
		// prefork's, not the --user's: a worker that could write here could
		// swap a socket for a symbolic link between prefork's bind and chown
		// (root would chown any file to the user) or remove the directory
		// (no worker could start again). The user's group may enter it; each
		// socket is the user's own, mode 0600, so no one else connects.
		err := os.Chown(dir, -1, gid)
		if err == nil {
			err = os.Chmod(dir, 0o710)
		}
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("notify socket directory: %w", err)
		}
	}
	return &notifyDir{path: dir, uid: uid, gid: gid}, nil
}

func (d *notifyDir) remove() { os.RemoveAll(d.path) }

// notifySocket is one worker's NOTIFY_SOCKET: only that worker is told its path,
// and on Linux only datagrams sent by the worker or a process of its process
// group count, as systemd's NotifyAccess=all counts the service's processes.
type notifySocket struct {
	path string
	conn *net.UnixConn
	log  *slog.Logger
	done chan struct{} // closed when its reader returns
}

func (d *notifyDir) open(slot int) (*notifySocket, error) {
	path := filepath.Join(d.path, fmt.Sprintf("w%d.%d", slot, d.seq.Add(1)))
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	if err := passCred(conn); err != nil {
		conn.Close()
		os.Remove(path)
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	if d.uid >= 0 {
		// The socket, and the file the shim reports an exec failure in
		// (command.go), made here: the --user cannot create files in d.
		err := os.Chown(path, d.uid, d.gid)
		if err == nil {
			err = os.Chmod(path, 0o600)
		}
		if err == nil {
			var f *os.File
			if f, err = os.OpenFile(execErrorPath(path), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err == nil {
				err = f.Chown(d.uid, d.gid)
				f.Close()
			}
		}
		if err != nil {
			conn.Close()
			os.Remove(path)
			os.Remove(execErrorPath(path))
			return nil, fmt.Errorf("notify socket: %w", err)
		}
	}
	return &notifySocket{path: path, conn: conn, log: d.log}, nil
}

// start runs the reader of worker pid's socket on its own goroutine.
func (n *notifySocket) start(pid int, deliver func(map[string]string)) {
	n.done = make(chan struct{})
	go func() {
		defer close(n.done)
		n.read(pid, deliver)
	}()
}

// pause stops the reader (an upgrade's); what is not read yet stays queued
// in the socket. The channel closes once the reader returned.
func (n *notifySocket) pause() <-chan struct{} {
	n.conn.SetReadDeadline(time.Unix(1, 0))
	return n.done
}

// resume restarts a paused reader.
func (n *notifySocket) resume(pid int, deliver func(map[string]string)) {
	n.conn.SetReadDeadline(time.Time{})
	n.start(pid, deliver)
}

// read delivers every datagram from worker pid (or its process group), parsed,
// until the socket is closed.
func (n *notifySocket) read(pid int, deliver func(map[string]string)) {
	buf := make([]byte, 4096)
	oob := make([]byte, notifyOOB)
	for {
		k, oobn, flags, _, err := n.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		if flags&syscall.MSG_TRUNC != 0 { // as systemd does: half a message is none
			if n.log != nil {
				n.log.Warn("dropped a notification longer than 4096 bytes", "pid", pid)
			}
			continue
		}
		if notifyChecksSender {
			if from := notifySender(oob[:oobn]); !fromWorker(pid, from) {
				if n.log != nil {
					n.log.Debug("ignored a notification from outside the worker's process group", "pid", pid, "sender", from)
				}
				continue
			}
		}
		if msg := parseNotify(buf[:k]); len(msg) > 0 {
			deliver(msg)
		}
	}
}

// fromWorker says whether sender is the worker or in its process group (the
// worker leads its own group). A sender that has already exited and been
// reaped cannot be placed and does not count: systemd-notify waits (BARRIER=1)
// until its message was read, so it is still there.
func fromWorker(pid, sender int) bool {
	if sender <= 0 {
		return false
	}
	if sender == pid {
		return true
	}
	pg, err := syscall.Getpgid(sender)
	return err == nil && pg == pid
}

func (n *notifySocket) close() {
	if n == nil { // a fake worker's (slots_test.go)
		return
	}
	n.conn.Close()
	os.Remove(n.path)
	os.Remove(execErrorPath(n.path))
}

// parseNotify reads newline-separated KEY=VALUE assignments as sd_notify sends
// them; lines without '=' or with an empty key are ignored.
func parseNotify(b []byte) map[string]string {
	msg := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t\x00") {
			continue
		}
		msg[k] = v
	}
	return msg
}

// upstream is prefork's own NOTIFY_SOCKET, taken out of the environment at
// start so that no worker ever sees it.
type upstream struct{ addr string }

func takeUpstream() *upstream {
	addr := os.Getenv("NOTIFY_SOCKET")
	os.Unsetenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	return &upstream{addr}
}

// send writes one datagram to prefork's supervisor.
func (u *upstream) send(state string) error {
	if u == nil {
		return nil
	}
	return pw.NotifySocket(u.addr, state)
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, which RELOADING=1 carries.
func monotonicUsec() string {
	return strconv.FormatInt(monotonicNow().Microseconds(), 10)
}

// upstreamWatchdog is prefork's own WATCHDOG_USEC, when its supervisor set one
// for prefork; the variables are removed so workers never see them.
func upstreamWatchdog() time.Duration {
	usec, _ := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	pid := os.Getenv("WATCHDOG_PID")
	if usec <= 0 || (pid != "" && pid != strconv.Itoa(os.Getpid())) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond
}
