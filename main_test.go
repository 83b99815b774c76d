//go:build linux || darwin

// This file tests the command line: usage errors and their exit statuses,
// help, version, and where option parsing stops.
package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	noexec := filepath.Join(dir, "noexec")
	os.WriteFile(noexec, []byte("#!/bin/sh\n"), 0o644)
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{}, 2, "no command given"},
		{[]string{"-p", "8080"}, 2, "no command given"},
		{[]string{"--bogus", "true"}, 2, "unknown option --bogus"},
		{[]string{"-x", "true"}, 2, "unknown option -x"},
		{[]string{"-n"}, 2, "needs a value"},
		{[]string{"-n", "0", "true"}, 2, "invalid value for -n"},
		{[]string{"-n", "lots", "true"}, 2, "invalid value for -n"},
		{[]string{"-n", "100000", "true"}, 2, "more than prefork runs"},
		{[]string{"--workers=-3", "true"}, 2, "invalid value for --workers"},
		{[]string{"--mode", "fast", "true"}, 2, "invalid value for --mode"},
		{[]string{"--grace", "soon", "true"}, 2, "invalid value for --grace"},
		{[]string{"--grace", "-1s", "true"}, 2, "invalid value for --grace"},
		{[]string{"--stop-signal", "NOPE", "true"}, 2, "unknown signal"},
		{[]string{"--stop-signal", "99", "true"}, 2, "out of range"},
		{[]string{"--backoff-min", "5s", "--backoff-max", "1s", "true"}, 2, "above --backoff-max"},
		{[]string{"--backoff-min", "0", "true"}, 2, "--backoff-min must be above 0"},
		{[]string{"--max-restarts", "-1", "true"}, 2, "invalid value for --max-restarts"},
		{[]string{"--demo=yes"}, 2, "takes no value"},
		{[]string{"--version=1"}, 2, "takes no value"},
		{[]string{"--help=yes"}, 2, "takes no value"},
		{[]string{"--rr-window", "4", "-p", "0", "true"}, 2, "--rr-window applies to --mode rr only"},
		{[]string{"--demo", "true"}, 2, "give no command"},
		{[]string{"--log-format", "xml", "true"}, 2, "invalid value for --log-format"},
		{[]string{"--ready", "maybe", "true"}, 2, "invalid value for --ready"},
		{[]string{"--watchdog", "1ms", "true"}, 2, "too short"},
		{[]string{"--user", "no-such-user-here", "-p", "0", "true"}, 2, "no such user"},
		{[]string{"--node-cluster", "on", "--node-send-server", "srv", "true"}, 2, "--node-send-server sends prefork's listeners"},
		{[]string{"-p", "0", "no-such-command-xyz"}, 127, "command not found"},
		{[]string{"-p", "0", noexec}, 126, "not executable"},
		{[]string{"-p", "0", dir}, 126, "is a directory"},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		code := run(c.args, &out, &errb)
		if code != c.code || !strings.Contains(errb.String(), c.msg) {
			t.Errorf("prefork %q: status %d, stderr %q; want status %d and %q", c.args, code, errb.String(), c.code, c.msg)
		}
		for _, line := range strings.Split(strings.TrimSuffix(errb.String(), "\n"), "\n") {
			if !strings.HasPrefix(line, "prefork: ") || strings.HasSuffix(line, ".") { // the hint too
				t.Errorf("prefork %q: line %q is not prefork's own form", c.args, line)
			}
		}
		if c.code == 2 && !strings.Contains(errb.String(), "--help") {
			t.Errorf("prefork %q: usage error without a hint: %q", c.args, errb.String())
		}
	}
}

func TestHelpAndVersion(t *testing.T) {
	for _, a := range []string{"-h", "--help"} {
		var out, errb bytes.Buffer
		if code := run([]string{a}, &out, &errb); code != 0 || !strings.Contains(out.String(), "usage: prefork") {
			t.Errorf("%s: status %d, output %q", a, code, out.String())
		}
		for _, form := range []string{"HOST:PORT", ":PORT", "[V6]:PORT", "unix:/path", "unix:@name", "udp:HOST:PORT"} {
			if !strings.Contains(out.String(), form) {
				t.Errorf("%s: the listener form %s is missing", a, form)
			}
		}
	}
	var out bytes.Buffer
	if code := run([]string{"--version"}, &out, io.Discard); code != 0 || !strings.HasPrefix(out.String(), "prefork ") || strings.Contains(out.String(), "(devel)") {
		t.Errorf("--version: status %d, output %q", code, out.String())
	}
	defer func(v string) { buildVersion = v }(buildVersion)
	buildVersion = "1.2.3"
	out.Reset()
	if run([]string{"--version"}, &out, io.Discard); out.String() != "prefork 1.2.3\n" {
		t.Errorf("--version with -X main.buildVersion=1.2.3: %q", out.String())
	}
}

func TestOptionParsingStopsAtCommand(t *testing.T) {
	c, err := parseArgs([]string{"-n", "2", "--grace=5s", "-p8080", "./server", "-p", "9000", "--grace", "1s"})
	if err != nil {
		t.Fatal(err)
	}
	if c.workers != 2 || c.grace != 5*time.Second || len(c.specs) != 1 {
		t.Errorf("options read wrong: %+v", c)
	}
	if got := strings.Join(c.command, " "); got != "./server -p 9000 --grace 1s" {
		t.Errorf("command %q: the command's own flags must not be read", got)
	}
	c, err = parseArgs([]string{"-p", "1", "--", "-weird-name", "x"})
	if err != nil || strings.Join(c.command, " ") != "-weird-name x" {
		t.Errorf("after --: command %q, err %v", c.command, err)
	}
}
