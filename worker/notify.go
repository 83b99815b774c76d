//go:build unix

// This file implements sd_notify: state lines sent as one datagram to the unix
// socket named by $NOTIFY_SOCKET, which prefork gives each worker.
package worker

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Notify sends state ("READY=1", "STATUS=...", several lines separated by
// newlines) to $NOTIFY_SOCKET: a path, or an abstract socket name starting
// with '@' (Linux). It does nothing and returns nil when NOTIFY_SOCKET is unset.
func Notify(state string) error {
	return NotifySocket(os.Getenv("NOTIFY_SOCKET"), state)
}

// NotifySocket sends state to the sd_notify socket name, as Notify does with
// $NOTIFY_SOCKET; for a program that kept the value and unset the variable.
func NotifySocket(name, state string) error {
	if name == "" {
		return nil
	}
	if name[0] != '/' && name[0] != '@' {
		return fmt.Errorf("worker: NOTIFY_SOCKET %q is neither a path nor an abstract socket name", name)
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("worker: notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("worker: notify: %w", err)
	}
	return nil
}

// Ready tells prefork the worker is up (it matters with --ready notify).
func Ready() error { return Notify("READY=1") }

// Stopping tells prefork the worker is about to exit on its own (after a fatal
// error, say): prefork starts its replacement at once. It is not for a stop
// that prefork asked for.
func Stopping() error { return Notify("STOPPING=1") }

// Watchdog tells prefork the worker is alive; with --watchdog it must come at
// least every WatchdogInterval.
func Watchdog() error { return Notify("WATCHDOG=1") }

// Status sets the worker's one-line status; newlines become spaces.
func Status(s string) error { return Notify("STATUS=" + strings.ReplaceAll(s, "\n", " ")) }

// WatchdogInterval returns $WATCHDOG_USEC (set with prefork --watchdog), or 0.
// Send Watchdog about twice as often.
func WatchdogInterval() time.Duration {
	us, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || us <= 0 {
		return 0
	}
	return time.Duration(us) * time.Microsecond
}
