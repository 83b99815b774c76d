//go:build linux || darwin

// This file holds the readers of option values that are more than a number:
// durations, worker counts and signals. (Sizes and -n MIN:MAX are in
// internal/pool, addresses in internal/sock, next to what uses them.)
package main

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// parseDuration reads a Go duration ("1.5s", "300ms") or a bare number of seconds.
func parseDuration(v string) (time.Duration, error) {
	if f, err := strconv.ParseFloat(v, 64); err == nil && !strings.ContainsAny(v, "xXpP_") {
		if f < 0 || f > 1e9 || f != f {
			return 0, fmt.Errorf("%q is out of range", v)
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration such as 500ms, 30s or 2m", v)
	}
	if d < 0 {
		return 0, fmt.Errorf("%q is negative", v)
	}
	return d, nil
}

// parseWorkers reads -n: "auto" (0) or 1…maxWorkers.
func parseWorkers(v string) (int, error) {
	if v == "auto" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%q is neither auto nor a number of workers above 0", v)
	}
	if n > maxWorkers {
		return 0, fmt.Errorf("%d workers is more than prefork runs (at most %d)", n, maxWorkers)
	}
	return n, nil
}

var signalNames = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT,
	"KILL": syscall.SIGKILL, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2,
	"TERM": syscall.SIGTERM, "WINCH": syscall.SIGWINCH, "ABRT": syscall.SIGABRT,
	"ALRM": syscall.SIGALRM, "CONT": syscall.SIGCONT, "STOP": syscall.SIGSTOP,
	"TSTP": syscall.SIGTSTP, "PWR": sigPWR,
}

// parseSignal reads TERM, SIGTERM, term or a number from 1 to 31.
func parseSignal(v string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(v); err == nil {
		if n < 1 || n > 31 {
			return 0, fmt.Errorf("signal number %d is out of range 1-31", n)
		}
		return syscall.Signal(n), nil
	}
	name := strings.TrimPrefix(strings.ToUpper(v), "SIG")
	if s, ok := signalNames[name]; ok && s != 0 {
		return s, nil
	}
	return 0, fmt.Errorf("unknown signal %q (try TERM, INT, QUIT, USR1 or a number)", v)
}

// Choices the command line makes once: each is a small integer type whose zero
// value is the default, named by the string the option takes.
type (
	mode      uint8 // --mode: who accepts connections
	readyRule uint8 // --ready: what makes a new worker up
	killMode  uint8 // --kill-mode: where the stop signal goes
	nodeRule  uint8 // --node-cluster: whether prefork is a Node cluster primary
	logFormat uint8 // --log-format
	balance   uint8 // --balance: which worker gets a connection
)

const (
	modeShared    mode = iota // every worker accepts on the shared listeners
	modeReuseport             // each worker has its own SO_REUSEPORT sockets
	modeRR                    // prefork accepts and hands connections out (rr.go)
)

const (
	readyAuto     readyRule = iota // up at READY=1, Node listening or seen waiting; else by the delay rule
	readyOnDelay                   // up after --ready-delay (or READY=1 / Node listening)
	readyOnNotify                  // up only at READY=1 (or Node listening)
	readyOnListen                  // up only when seen waiting for connections (or Node listening)
)

// upBy is how a worker came up, as the status, the control socket and the
// metrics say it.
type upBy uint8

const (
	upNot       upBy = iota // not up (yet)
	upNotify                // it sent READY=1
	upListening             // a Node worker reported listening
	upSeen                  // it was seen waiting for connections (internal/listenwait)
	upDelay                 // the delay rule: alive --ready-delay, or not seen by --ready-timeout
)

const (
	killGroup killMode = iota // the stop signal to the worker's process group
	killMixed                 // to the worker alone; SIGKILL to the group at --grace
)

const (
	nodeAuto nodeRule = iota // the channel when the command looks like Node
	nodeOn                   // always
	nodeOff                  // never
)

const (
	logText logFormat = iota
	logJSON
)

const (
	balanceLeast      balance = iota // rr: the ready worker with the fewest connections unacked, ties in turn
	balanceRoundRobin                // rr: strict turns
	balanceSource                    // the client's address picks the slot (rr: at accept; reuseport: CBPF)
)

var (
	modeNames      = []string{"shared", "reuseport", "rr"}
	readyNames     = []string{"auto", "delay", "notify", "listen"}
	upByNames      = []string{"", "notify", "listening", "seen waiting", "delay"}
	killModeNames  = []string{"group", "mixed"}
	nodeRuleNames  = []string{"auto", "on", "off"}
	logFormatNames = []string{"text", "json"}
	balanceNames   = []string{"least", "roundrobin", "source"}
)

func (m mode) String() string      { return modeNames[m] }
func (r readyRule) String() string { return readyNames[r] }
func (k killMode) String() string  { return killModeNames[k] }
func (u upBy) String() string      { return upByNames[u] }
func (b balance) String() string   { return balanceNames[b] }

// choiceOpt reads an option whose value is one of names; the index is the value.
func choiceOpt[T ~uint8](field func(*config) *T, names []string) func(*config, string) error {
	return func(c *config, v string) error {
		for i, n := range names {
			if v == n {
				*field(c) = T(i)
				return nil
			}
		}
		return fmt.Errorf("%q is not one of %s", v, strings.Join(names, ", "))
	}
}
