//go:build linux || darwin

// Command prefork binds ports once and runs a command N times, each worker
// inheriting the listening sockets the way systemd passes them (fd 3, 4, …,
// LISTEN_FDS, a per-worker LISTEN_PID, LISTEN_FDNAMES).
//
// This file holds the command line: options, usage, validation, and the entry
// points of prefork's hidden roles (the exec shim and the demo worker).
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prefork/prefork/internal/demo"
	"github.com/prefork/prefork/internal/listenwait"
	"github.com/prefork/prefork/internal/output"
	"github.com/prefork/prefork/internal/pool"
	"github.com/prefork/prefork/internal/sock"
	"github.com/prefork/prefork/internal/upgrade"
)

var usage = `usage: prefork [options] [--] command [args...]
       prefork [options] --demo
       prefork --ctl PATH ` + ctlSynopsis() + `

Bind the listeners once, then run command N times; every worker inherits the
listening sockets as fd 3, 4, ... with LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES.

Listeners:
  -p, --port PORT            TCP on all addresses (dual-stack); repeatable
  -l, --listen [NAME=]ADDR   HOST:PORT, :PORT, [V6]:PORT, unix:/path, unix:@name
                             (Linux abstract), udp:HOST:PORT or udp::PORT;
                             repeatable; NAME goes into LISTEN_FDNAMES
      --backlog N            listen backlog (default: the system maximum)
Workers:
  -n, --workers N|auto|MIN:MAX
                             number of workers (default auto: usable CPUs);
                             MIN:MAX sizes the pool from the accept queue
      --idle-timeout DUR     MIN:MAX: stop a worker above MIN after the pool
                             was idle this long (default 10s)
      --max-rss SIZE         replace a worker whose process group's resident
                             memory exceeds SIZE (512M, 2G; Linux)
      --max-lifetime DUR     replace each worker after DUR, less up to 10% jitter
      --mode MODE            shared, reuseport or rr (default shared)
      --rr-window N          rr mode: unacked connections per worker (default 32)
      --balance POLICY       which worker gets a connection: least (rr default:
                             fewest unacked, ties in turn), roundrobin (strict
                             turns) or source (the client's address picks the
                             slot; rr, or reuseport on Linux); not in shared mode
      --user USER[:GROUP]    run workers as this user
      --demo                 run the built-in demo HTTP worker
Node.js:
      --node-cluster auto|on|off  be the workers' cluster primary: their listen()
                             calls get prefork's sockets (default auto: on when
                             the command is node or nodejs)
      --node-send-server MSG send each worker every listener as
                             process.send(MSG, server) does
Lifecycle:
      --ready RULE           when a new worker counts as up: auto (READY=1, Node's
                             listening, or seen waiting for connections; else by
                             the delay rule), delay, notify or listen (default auto)
      --ready-delay DUR      the delay rule: up once alive this long (default 1s)
      --ready-timeout DUR    notify, listen: not up by then is a failed start;
                             auto: the longest wait to be seen (default 60s)
      --min-uptime DUR       exiting sooner is a failed start (default 1s)
      --backoff-min DUR      first restart delay after a failed start (default 100ms)
      --backoff-max DUR      restart delay cap (default 30s)
      --max-restarts N       failed starts in a row before giving up; 0 = never (default 10)
      --watchdog DUR         ready workers must send WATCHDOG=1 this often (default off)
      --grace DUR            time a stopping worker gets before SIGKILL (default 30s)
      --stop-signal SIG      graceful stop signal for workers (default TERM)
      --kill-mode MODE       group: the stop signal to the worker's process group;
                             mixed: to the worker alone, SIGKILL to the group after
                             --grace (default group)
      --drain-delay DUR      on TERM/INT, wait this long before stopping workers (default 0s)
Output:
      --pidfile PATH         write prefork's pid here
      --status-file PATH     JSON state, rewritten on every change
      --control PATH         serve the control socket (for prefork --ctl) at PATH
      --metrics-file PATH    Prometheus text metrics, rewritten every 5s
      --log-format text|json prefork's own log lines on stderr (default text)
      --worker-output MODE   workers' stdout and stderr: inherit (prefork's own,
                             the default), prefix ("SLOT.PID| " before each line)
                             or json (one object a line); relayed lines never mix
  -q, --quiet                only warnings and errors
  -v, --verbose              debug logging
  -h, --help                 show this help
      --version              print the version

Control (talks to a prefork started with --control PATH; starts nothing):
      --ctl PATH COMMAND     ` + ctlList(true) + `;
                             exit 0 done, 1 failed (reload abandoned, refused,
                             upgrade rolled back, prefork gone), 2 usage,
                             3 timed out (the command goes on in prefork)
                             upgrade: re-execute prefork's newly installed
                             binary in place: the same pid, the same workers

Signals: TERM/INT stop, HUP rolling reload, TTIN/TTOU one worker more/fewer,
USR1/USR2/WINCH passed on, QUIT fast stop. See prefork(1).
`

// Exit statuses, as documented in the man page.
const (
	exitOK       = 0
	exitFailure  = 1
	exitUsage    = 2
	exitNoExec   = 126
	exitNotFound = 127
)

// Limits that turn absurd values into usage errors instead of fork storms.
const (
	maxWorkers  = 1024
	maxRRWindow = 65536
)

// config is everything the command line says.
type config struct {
	specs        []sock.Spec
	backlog      int
	workers      int // 0 = auto; with -n MIN:MAX, MIN
	mode         mode
	rrWindow     int
	user         string
	demo         bool
	ready        readyRule
	readyDelay   time.Duration
	readyTimeout time.Duration
	minUptime    time.Duration
	backoffMin   time.Duration
	backoffMax   time.Duration
	maxRestarts  int
	watchdog     time.Duration
	grace        time.Duration
	stopSignal   syscall.Signal
	killMode     killMode // systemd's KillMode
	drainDelay   time.Duration
	pidfile      string
	statusFile   string
	control      string // --control: serve the control socket here
	metricsFile  string
	ctl          string // --ctl: be the control client of the prefork at this socket
	logFormat    logFormat
	workerOutput output.Mode // --worker-output (internal/output)
	verbosity    int         // -1 quiet, 0 normal, 1 verbose
	command      []string

	poolMin, poolMax int // -n MIN:MAX; poolMax 0 = a fixed pool
	idleTimeout      time.Duration
	idleTimeoutSet   bool
	rrWindowSet      bool
	balance          balance // --balance (rr.go)
	balanceSet       bool
	maxRSS           int64 // bytes; 0 = off
	maxLifetime      time.Duration
	maxLifetimeSet   bool
	nodeCluster      nodeRule // node.go
	nodeSendServer   string   // --node-send-server MSG
}

func defaultConfig() *config {
	return &config{
		rrWindow:     rrDefaultWindow,
		readyDelay:   time.Second,
		readyTimeout: 60 * time.Second,
		minUptime:    time.Second,
		backoffMin:   100 * time.Millisecond,
		backoffMax:   30 * time.Second,
		maxRestarts:  10,
		grace:        30 * time.Second,
		stopSignal:   syscall.SIGTERM,
		idleTimeout:  10 * time.Second,
	}
}

// usageError is a command-line mistake: exit status 2 with a hint.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// option is one command-line option; short and long names set one variable.
type option struct {
	long, short string
	boolean     bool
	set         func(c *config, v string) error
}

func durationOpt(field func(*config) *time.Duration) func(*config, string) error {
	return func(c *config, v string) error {
		d, err := parseDuration(v)
		if err != nil {
			return err
		}
		*field(c) = d
		return nil
	}
}

func intOpt(field func(*config) *int, lo, hi int) func(*config, string) error {
	return func(c *config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			return fmt.Errorf("%q is not a whole number from %d to %d", v, lo, hi)
		}
		*field(c) = n
		return nil
	}
}

var options = []option{
	{long: "port", short: "p", set: func(c *config, v string) error {
		s, err := sock.ParsePort(v)
		c.specs = append(c.specs, s)
		return err
	}},
	{long: "listen", short: "l", set: func(c *config, v string) error {
		s, err := sock.ParseSpec(v)
		c.specs = append(c.specs, s)
		return err
	}},
	{long: "backlog", set: intOpt(func(c *config) *int { return &c.backlog }, 1, 1<<20)},
	{long: "workers", short: "n", set: func(c *config, v string) error {
		if strings.Contains(v, ":") {
			lo, hi, err := pool.ParseRange(v, maxWorkers)
			c.workers, c.poolMin, c.poolMax = lo, lo, hi
			return err
		}
		n, err := parseWorkers(v)
		c.workers, c.poolMin, c.poolMax = n, 0, 0
		return err
	}},
	{long: "idle-timeout", set: func(c *config, v string) error {
		d, err := parseDuration(v)
		c.idleTimeout, c.idleTimeoutSet = d, true
		return err
	}},
	{long: "max-rss", set: func(c *config, v string) error {
		n, err := pool.ParseSize(v)
		c.maxRSS = n
		return err
	}},
	{long: "max-lifetime", set: func(c *config, v string) error {
		d, err := parseDuration(v)
		c.maxLifetime, c.maxLifetimeSet = d, true
		return err
	}},
	{long: "mode", set: choiceOpt(func(c *config) *mode { return &c.mode }, modeNames)},
	{long: "rr-window", set: func(c *config, v string) error {
		c.rrWindowSet = true
		return intOpt(func(c *config) *int { return &c.rrWindow }, 1, maxRRWindow)(c, v)
	}},
	{long: "balance", set: func(c *config, v string) error {
		c.balanceSet = true
		return choiceOpt(func(c *config) *balance { return &c.balance }, balanceNames)(c, v)
	}},
	{long: "user", set: func(c *config, v string) error { c.user = v; return nil }},
	{long: "demo", boolean: true, set: func(c *config, _ string) error { c.demo = true; return nil }},
	{long: "ready", set: choiceOpt(func(c *config) *readyRule { return &c.ready }, readyNames)},
	{long: "ready-delay", set: durationOpt(func(c *config) *time.Duration { return &c.readyDelay })},
	{long: "ready-timeout", set: durationOpt(func(c *config) *time.Duration { return &c.readyTimeout })},
	{long: "min-uptime", set: durationOpt(func(c *config) *time.Duration { return &c.minUptime })},
	{long: "backoff-min", set: durationOpt(func(c *config) *time.Duration { return &c.backoffMin })},
	{long: "backoff-max", set: durationOpt(func(c *config) *time.Duration { return &c.backoffMax })},
	{long: "max-restarts", set: intOpt(func(c *config) *int { return &c.maxRestarts }, 0, 1<<30)},
	{long: "watchdog", set: durationOpt(func(c *config) *time.Duration { return &c.watchdog })},
	{long: "grace", set: durationOpt(func(c *config) *time.Duration { return &c.grace })},
	{long: "stop-signal", set: func(c *config, v string) error {
		s, err := parseSignal(v)
		c.stopSignal = s
		return err
	}},
	{long: "kill-mode", set: choiceOpt(func(c *config) *killMode { return &c.killMode }, killModeNames)},
	{long: "drain-delay", set: durationOpt(func(c *config) *time.Duration { return &c.drainDelay })},
	{long: "node-cluster", set: choiceOpt(func(c *config) *nodeRule { return &c.nodeCluster }, nodeRuleNames)},
	{long: "node-send-server", set: func(c *config, v string) error { c.nodeSendServer = v; return nil }},
	{long: "pidfile", set: func(c *config, v string) error { c.pidfile = v; return nil }},
	{long: "status-file", set: func(c *config, v string) error { c.statusFile = v; return nil }},
	{long: "control", set: func(c *config, v string) error { c.control = v; return nil }},
	{long: "metrics-file", set: func(c *config, v string) error { c.metricsFile = v; return nil }},
	{long: "ctl", set: func(c *config, v string) error { c.ctl = v; return nil }},
	{long: "log-format", set: choiceOpt(func(c *config) *logFormat { return &c.logFormat }, logFormatNames)},
	{long: "worker-output", set: choiceOpt(func(c *config) *output.Mode { return &c.workerOutput }, output.Names)},
	{long: "quiet", short: "q", boolean: true, set: func(c *config, _ string) error { c.verbosity = -1; return nil }},
	{long: "verbose", short: "v", boolean: true, set: func(c *config, _ string) error { c.verbosity = 1; return nil }},
}

// errHelp and errVersion are not failures: main prints and exits 0.
var (
	errHelp    = errors.New("help")
	errVersion = errors.New("version")
)

func lookupOption(name string, long bool) *option {
	for i := range options {
		if (long && options[i].long == name) || (!long && name != "" && options[i].short == name) {
			return &options[i]
		}
	}
	return nil
}

// parseArgs reads options up to "--" or the first word that is not an option, so
// the command's own flags are never read by prefork.
func parseArgs(args []string) (*config, error) {
	c := defaultConfig()
	i := 0
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			i++
			break
		}
		if len(a) < 2 || a[0] != '-' {
			break
		}
		var name, value string
		hasValue, long := false, strings.HasPrefix(a, "--")
		if long {
			name = a[2:]
			if k := strings.IndexByte(name, '='); k >= 0 {
				name, value, hasValue = name[:k], name[k+1:], true
			}
		} else {
			name = a[1:2]
			if len(a) > 2 {
				value, hasValue = a[2:], true
			}
		}
		dash := "-"
		if long {
			dash = "--"
		}
		switch {
		case (name == "h" && !long || name == "help" || name == "version" && long) && hasValue:
			return nil, usagef("option %s%s takes no value", dash, name)
		case name == "h" && !long || name == "help":
			return nil, errHelp
		case name == "version" && long:
			return nil, errVersion
		}
		o := lookupOption(name, long)
		if o == nil {
			return nil, usagef("unknown option %s%s", dash, name)
		}
		if o.boolean {
			if hasValue {
				return nil, usagef("option %s%s takes no value", dash, name)
			}
		} else if !hasValue {
			if i+1 >= len(args) {
				return nil, usagef("option %s%s needs a value", dash, name)
			}
			i++
			value = args[i]
		}
		if err := o.set(c, value); err != nil {
			return nil, usagef("invalid value for %s%s: %v", dash, name, err)
		}
	}
	c.command = args[i:]
	return c, c.validate()
}

// validate checks what no single option can check alone.
func (c *config) validate() error {
	if c.ctl != "" { // the control client: the words after PATH are its command
		if len(c.command) == 0 {
			return usagef("--ctl %s needs a command: %s", c.ctl, ctlList(false))
		}
		return nil
	}
	switch {
	case c.demo && len(c.command) > 0:
		return usagef("--demo runs the built-in worker: give no command")
	case !c.demo && len(c.command) == 0:
		return usagef("no command given")
	case c.backoffMin <= 0:
		return usagef("--backoff-min must be above 0")
	case c.backoffMin > c.backoffMax:
		return usagef("--backoff-min %v is above --backoff-max %v", c.backoffMin, c.backoffMax)
	case c.readyTimeout <= 0: // --ready notify, and Node workers under --ready delay
		return usagef("--ready-timeout must be above 0")
	case c.ready == readyOnListen && !listenwait.Supported:
		return usagef("--ready listen needs Linux's /proc/PID/syscall: choose --ready auto, delay or notify")
	case c.watchdog < 0:
		return usagef("--watchdog must not be negative")
	case c.rrWindowSet && c.mode != modeRR:
		return usagef("--rr-window applies to --mode rr only")
	case c.balanceSet && c.mode == modeShared:
		return usagef("--balance does not apply to --mode shared: the kernel wakes the worker that accepts (use --mode rr, or reuseport with --balance source)")
	case c.balanceSet && c.mode == modeReuseport && c.balance != balanceSource:
		return usagef("--balance %s needs --mode rr: in reuseport mode the kernel places connections, by its hash or by --balance source", c.balance)
	case c.balanceSet && c.mode == modeReuseport && !sock.SourceBalanceSupported:
		return usagef("--balance source in reuseport mode needs Linux (a classic BPF program on the SO_REUSEPORT group); use --mode rr --balance source")
	case c.nodeSendServer != "" && c.nodeCluster == nodeOff:
		return usagef("--node-send-server needs the Node cluster channel: drop --node-cluster off")
	}
	if c.watchdog > 0 && c.watchdog < 10*time.Millisecond {
		return usagef("--watchdog %v is too short (at least 10ms)", c.watchdog)
	}
	if err := c.validatePool(); err != nil {
		return err
	}
	if c.mode == modeReuseport && !reuseportSupported {
		return usagef("--mode reuseport needs Linux: the BSD kernel does not balance SO_REUSEPORT sockets (use --mode shared)")
	}
	for _, s := range c.specs {
		if c.mode == modeRR && s.Network == "udp" {
			return usagef("--mode rr hands over stream connections: %s is a UDP listener (use --mode shared or reuseport)", s.Text)
		}
		if c.mode == modeReuseport && s.Network == "unix" {
			return usagef("--mode reuseport needs TCP or UDP listeners: %s is a unix socket", s.Text)
		}
	}
	return nil
}

// buildVersion is set by a release build: go build -ldflags "-X
// main.buildVersion=1.2.0". Without it --version prints the module version the
// go command recorded (go install of a tagged version, or a pseudo-version from
// the git checkout it built in), else devVersion (built with -buildvcs=false,
// or outside a checkout).
var buildVersion string

const devVersion = "0.x-dev"

func version() string {
	v := buildVersion
	if bi, ok := debug.ReadBuildInfo(); ok && v == "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	if v == "" {
		v = devVersion
	}
	return "prefork " + v
}

// usageHint follows a usage error, as flag's usage follows its errors; a line
// of prefork's own like any other (prefixed, lowercase, no period).
const usageHint = "prefork: run 'prefork --help' for usage"

// run is main without os.Exit, for tests: it returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if fd, exeFD, ok, err := upgrade.Inherited(); ok { // an upgrade's new image, or its way back (startup.go)
		return adoptMain(fd, exeFD, err, stderr)
	}
	c, err := parseArgs(args)
	var ue *usageError
	switch {
	case errors.Is(err, errHelp):
		fmt.Fprint(stdout, usage)
		return exitOK
	case errors.Is(err, errVersion):
		fmt.Fprintln(stdout, version())
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "prefork: %s\n%s\n", ue.msg, usageHint)
		return exitUsage
	case err != nil:
		fmt.Fprintf(stderr, "prefork: %v\n", err)
		return exitFailure
	}
	if c.ctl != "" {
		releaseEarlySignals() // the client keeps the default actions: ^C ends it
		return ctlMain(c.ctl, c.command, stdout, stderr)
	}
	return supervise(c, stderr, nil)
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == demo.Arg {
		os.Exit(demo.Run())
	}
	if os.Getenv(shimEnv) != "" {
		os.Exit(runShim(os.Args[1:]))
	}
	if os.Getenv(upgrade.CheckEnv) != "" {
		os.Exit(answerUpgradeCheck())
	}
	os.Exit(onMainThread(func() int { return run(os.Args[1:], os.Stdout, os.Stderr) }))
}
