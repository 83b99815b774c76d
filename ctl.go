//go:build linux || darwin

// This file holds the control client, `prefork --ctl PATH COMMAND [args]`: it
// talks to a prefork started with --control PATH, prints what prefork answers
// and exits with a status a script can act on. Nothing is started.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// exitTimeout: the wait ran out before prefork said how it ended; what was
// asked for goes on in prefork.
const exitTimeout = 3

// ctlQuickTimeout bounds commands that answer at once (status, metrics).
const ctlQuickTimeout = 10 * time.Second

const ctlCommands = "status, reload, scale, stop or metrics"

// ctlMain runs one control command against the prefork at path and returns the
// exit status: 0 done, 1 failed (abandoned reload, refused, not prefork, prefork
// gone), 2 usage, 3 timed out.
func ctlMain(path string, args []string, stdout, stderr io.Writer) int {
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "prefork: "+format+"\n"+usageHint+"\n", a...)
		return exitUsage
	}
	failf := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "prefork: "+format+"\n", a...)
		return exitFailure
	}
	req := ctlRequest{Cmd: args[0]}
	var timeout time.Duration
	jsonOut, haveN := false, false
	for i := 1; i < len(args); i++ {
		a := args[i]
		name, value, hasValue := strings.Cut(a, "=")
		switch {
		case a == "--json" && req.Cmd == "status":
			jsonOut = true
		case name == "--timeout" && req.Cmd != "status" && req.Cmd != "metrics":
			if !hasValue {
				if i+1 >= len(args) {
					return usageErr("%s: --timeout needs a value", req.Cmd)
				}
				i++
				value = args[i]
			}
			d, err := parseDuration(value)
			if err != nil {
				return usageErr("%s: invalid value for --timeout: %v", req.Cmd, err)
			}
			timeout = d
		case req.Cmd == "scale" && !haveN && !strings.HasPrefix(a, "-"):
			n, err := strconv.Atoi(a)
			if err != nil || n < 1 || n > maxWorkers {
				return usageErr("scale: %q is not a number of workers from 1 to %d", a, maxWorkers)
			}
			req.Workers, haveN = n, true
		default:
			switch req.Cmd {
			case "status", "reload", "scale", "stop", "metrics":
				return usageErr("%s: unexpected argument %q", req.Cmd, a)
			}
		}
	}
	switch req.Cmd {
	case "status", "reload", "stop", "metrics":
	case "scale":
		if !haveN {
			return usageErr("scale needs the number of workers: prefork --ctl %s scale N", path)
		}
	default:
		return usageErr("unknown control command %q (try %s)", req.Cmd, ctlCommands)
	}

	conn, err := net.DialTimeout("unix", path, ctlQuickTimeout)
	if err != nil {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return failf("control socket %s does not exist (is prefork running with --control %s?)", path, path)
		case errors.Is(err, syscall.ECONNREFUSED):
			return failf("nothing answers on %s: prefork is not running there (a stale socket file)", path)
		case errors.Is(err, fs.ErrPermission):
			return failf("permission denied on %s: run this as prefork's user or root", path)
		case errors.Is(err, syscall.ENOTSOCK):
			return failf("%s is not a socket", path)
		}
		return failf("cannot reach prefork on %s: %v", path, err)
	}
	defer conn.Close()
	wait := timeout
	if req.Cmd == "status" || req.Cmd == "metrics" {
		wait = ctlQuickTimeout
	}
	deadline := time.Time{}
	if wait > 0 {
		deadline = time.Now().Add(wait)
	}
	conn.SetDeadline(deadline)
	b, _ := json.Marshal(req)
	// A refusal may come before the request is read, and the write then
	// fails: the answer is still there to read.
	_, writeErr := conn.Write(append(b, '\n'))
	timedOut := func() int {
		fmt.Fprintf(stderr, "prefork: %s: no outcome within %v; it goes on in prefork (see prefork --ctl %s status)\n", req.Cmd, wait, path)
		return exitTimeout
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadBytes('\n')
	if err != nil && writeErr != nil {
		return failf("cannot send the request to %s: %v", path, writeErr)
	}
	if err != nil {
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return timedOut()
		case len(line) == 0 && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)):
			if req.Cmd == "reload" || req.Cmd == "scale" {
				return failf("%s: prefork closed the connection before the outcome (did it exit?)", req.Cmd)
			}
			return failf("%s: prefork closed the connection without an answer (did it exit?)", req.Cmd)
		}
		return failf("%s: reading the answer from %s: %v", req.Cmd, path, err)
	}
	var resp ctlResponse
	if err := json.Unmarshal(line, &resp); err != nil || resp.Server != ctlServerName {
		return failf("%s does not answer as prefork's control socket", path)
	}
	if !resp.OK {
		return failf("%s: %s", req.Cmd, resp.Error)
	}
	switch req.Cmd {
	case "status":
		if resp.Status == nil {
			return failf("status: prefork sent no status")
		}
		if jsonOut {
			out, _ := json.MarshalIndent(resp.Status, "", "  ")
			fmt.Fprintf(stdout, "%s\n", out)
		} else {
			writeStatusTable(stdout, resp.Status)
		}
	case "metrics":
		fmt.Fprint(stdout, resp.Metrics)
	case "stop":
		// prefork keeps the connection open until it exits.
		if _, err := io.Copy(io.Discard, r); errors.Is(err, os.ErrDeadlineExceeded) {
			fmt.Fprintf(stderr, "prefork: stop: prefork still runs after %v; its workers are stopping\n", wait)
			return exitTimeout
		}
		fmt.Fprintln(stdout, "prefork stopped")
	default:
		fmt.Fprintf(stdout, "%s: %s\n", req.Cmd, resp.Message)
	}
	return exitOK
}

// writeStatusTable prints the status as a person reads it.
func writeStatusTable(w io.Writer, st *ctlStatus) {
	fmt.Fprintln(w, ctlSummary(st))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	hasStatus := false
	for _, ws := range st.Workers {
		hasStatus = hasStatus || ws.Status != ""
	}
	head := "SLOT\tPID\tGEN\tSTATE\tUPTIME\tRESTARTS\tLAST EXIT\tRSS\tCPU"
	if st.RR != nil {
		head += "\tRR INFLIGHT/ACKED"
	}
	if hasStatus {
		head += "\tSTATUS"
	}
	fmt.Fprintln(tw, head)
	for _, ws := range st.Workers {
		last, rss, cpu := "-", "-", "-"
		if ws.LastExit != nil {
			last = strconv.Itoa(*ws.LastExit)
		}
		if ws.RSS != nil {
			rss = humanBytes(*ws.RSS)
		}
		if ws.CPU != nil {
			cpu = strconv.FormatFloat(*ws.CPU, 'f', 2, 64) + "s"
		}
		up := st.Sampled.Sub(ws.Started)
		line := fmt.Sprintf("%d\t%d\t%d\t%s\t%s\t%d\t%s\t%s\t%s", ws.Slot, ws.PID, ws.Generation, ws.State,
			humanDuration(up), ws.Restarts, last, rss, cpu)
		if st.RR != nil {
			rr := "-"
			if ws.RRInflight != nil && ws.RRAcked != nil {
				rr = fmt.Sprintf("%d/%d", *ws.RRInflight, *ws.RRAcked)
			}
			line += "\t" + rr
		}
		if hasStatus {
			line += "\t" + ws.Status
		}
		fmt.Fprintln(tw, line)
	}
	tw.Flush()
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + "B"
	}
	f, suffix := float64(n)/unit, "K"
	for _, s := range []string{"M", "G", "T"} {
		if f < unit {
			break
		}
		f, suffix = f/unit, s
	}
	return strconv.FormatFloat(f, 'f', 1, 64) + suffix
}

// humanDuration is an uptime to the second, or to the minute past a day.
func humanDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	if d >= 24*time.Hour {
		days := d / (24 * time.Hour)
		return fmt.Sprintf("%dd%s", days, (d - days*24*time.Hour).Truncate(time.Minute))
	}
	return d.Truncate(time.Second).String()
}
