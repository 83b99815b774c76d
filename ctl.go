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

// ctlRun is one run of the client, for its command's done function.
type ctlRun struct {
	cmd            *ctlCommand
	stdout, stderr io.Writer
	json           bool          // --json
	wait           time.Duration // how long it waits for the outcome
	conn           *bufio.Reader // the rest of the connection
}

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
	cmd := ctlLookup(args[0])
	known := cmd != nil
	if !known { // said after its --timeout is checked, as it always was
		cmd = &ctlCommand{name: args[0], timeout: true}
	}
	c := &ctlRun{cmd: cmd, stdout: stdout, stderr: stderr}
	if !cmd.timeout {
		c.wait = ctlQuickTimeout
	}
	req := ctlRequest{Cmd: cmd.name}
	for i := 1; i < len(args); i++ {
		a := args[i]
		name, value, hasValue := strings.Cut(a, "=")
		switch {
		case a == "--json" && cmd.json:
			c.json = true
		case name == "--timeout" && cmd.timeout:
			if !hasValue {
				if i+1 >= len(args) {
					return usageErr("%s: --timeout needs a value", cmd.name)
				}
				i++
				value = args[i]
			}
			d, err := parseDuration(value)
			if err != nil {
				return usageErr("%s: invalid value for --timeout: %v", cmd.name, err)
			}
			c.wait = d
		case cmd.workers && req.Workers == 0 && !strings.HasPrefix(a, "-"):
			n, err := strconv.Atoi(a)
			if err != nil || n < 1 || n > maxWorkers {
				return usageErr("%s: %q is not a number of workers from 1 to %d", cmd.name, a, maxWorkers)
			}
			req.Workers = n
		case known:
			return usageErr("%s: unexpected argument %q", cmd.name, a)
		}
	}
	switch {
	case !known:
		return usageErr("unknown control command %q (try %s)", cmd.name, ctlList(false))
	case cmd.workers && req.Workers == 0:
		return usageErr("%s needs the number of workers: prefork --ctl %s %s N", cmd.name, path, cmd.name)
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
	if c.wait > 0 {
		conn.SetDeadline(time.Now().Add(c.wait))
	}
	b, _ := json.Marshal(req)
	// A refusal may come before the request is read, and the write then
	// fails: the answer is still there to read.
	_, writeErr := conn.Write(append(b, '\n'))
	c.conn = bufio.NewReader(conn)
	line, err := c.conn.ReadBytes('\n')
	if err != nil && writeErr != nil {
		return failf("cannot send the request to %s: %v", path, writeErr)
	}
	if err != nil {
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			fmt.Fprintf(stderr, "prefork: %s: no outcome within %v; it goes on in prefork (see prefork --ctl %s status)\n", cmd.name, c.wait, path)
			return exitTimeout
		case len(line) == 0 && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)):
			if cmd.waits {
				return failf("%s: prefork closed the connection before the outcome (did it exit?)", cmd.name)
			}
			return failf("%s: prefork closed the connection without an answer (did it exit?)", cmd.name)
		}
		return failf("%s: reading the answer from %s: %v", cmd.name, path, err)
	}
	var resp ctlResponse
	if err := json.Unmarshal(line, &resp); err != nil || resp.Server != ctlServerName {
		return failf("%s does not answer as prefork's control socket", path)
	}
	if !resp.OK {
		return failf("%s: %s", cmd.name, resp.Error)
	}
	return cmd.done(c, resp)
}

// status, metrics, stopped and message show a command's answer (ctlCommands).
func (c *ctlRun) status(r ctlResponse) int {
	if r.Status == nil {
		fmt.Fprintf(c.stderr, "prefork: status: prefork sent no status\n")
		return exitFailure
	}
	if c.json {
		out, _ := json.MarshalIndent(r.Status, "", "  ")
		fmt.Fprintf(c.stdout, "%s\n", out)
	} else {
		writeStatusTable(c.stdout, r.Status)
	}
	return exitOK
}

func (c *ctlRun) metrics(r ctlResponse) int {
	fmt.Fprint(c.stdout, r.Metrics)
	return exitOK
}

func (c *ctlRun) stopped(ctlResponse) int {
	// prefork keeps the connection open until it exits.
	if _, err := io.Copy(io.Discard, c.conn); errors.Is(err, os.ErrDeadlineExceeded) {
		fmt.Fprintf(c.stderr, "prefork: stop: prefork still runs after %v; its workers are stopping\n", c.wait)
		return exitTimeout
	}
	fmt.Fprintln(c.stdout, "prefork stopped")
	return exitOK
}

func (c *ctlRun) message(r ctlResponse) int {
	fmt.Fprintf(c.stdout, "%s: %s\n", c.cmd.name, r.Message)
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
	head := "SLOT\tPID\tGEN\tSTATE\tUP BY\tUPTIME\tRESTARTS\tLAST EXIT\tRSS\tCPU"
	if st.RR != nil {
		head += "\tRR HANDED/INFLIGHT/ACKED"
	}
	if hasStatus {
		head += "\tSTATUS"
	}
	fmt.Fprintln(tw, head)
	for _, ws := range st.Workers {
		last, rss, cpu, upBy := "-", "-", "-", "-"
		if ws.UpBy != "" {
			upBy = ws.UpBy
		}
		if ws.SeenIn != "" {
			upBy += " (" + ws.SeenIn + ")"
		}
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
		line := fmt.Sprintf("%d\t%d\t%d\t%s\t%s\t%s\t%d\t%s\t%s\t%s", ws.Slot, ws.PID, ws.Generation, ws.State, upBy,
			humanDuration(up), ws.Restarts, last, rss, cpu)
		if st.RR != nil {
			rr := "-"
			if ws.RRHanded != nil && ws.RRInflight != nil && ws.RRAcked != nil {
				rr = fmt.Sprintf("%d/%d/%d", *ws.RRHanded, *ws.RRInflight, *ws.RRAcked)
				if ws.RRUnread {
					rr += " unread" // its connections wait: it does not read its handoff channel
				}
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
	f, i := float64(n), 0
	for ; f >= 1024 && i < 4; i++ {
		f /= 1024
	}
	if i == 0 {
		return strconv.FormatInt(n, 10) + "B"
	}
	return strconv.FormatFloat(f, 'f', 1, 64) + "BKMGT"[i:i+1]
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
