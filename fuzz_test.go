//go:build linux || darwin

// This file holds the fuzz targets for the parsers that read outside input: the
// option values (durations, signals, worker counts), whole command lines, and
// the sd_notify datagrams workers send. Crashers found are kept forever under
// testdata/fuzz/. reliability/fuzz.sh runs every target briefly in CI.
package main

import (
	"maps"
	"strings"
	"testing"
	"time"
)

func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"0", "1", "1.5", "30s", "500ms", "2m", "1h30m", "-1s", "-0", "1e9", "1e10", "NaN",
		"Inf", "+Inf", "infinity", "0x10", "1_000", "0x1p-2", ".5", "5.", "", " 1", "1 s", "9223372036s", "1µs"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseDuration(s)
		if err != nil {
			if d != 0 {
				t.Fatalf("parseDuration(%q) = %v with error %v; want 0 with an error", s, d, err)
			}
			return
		}
		if d < 0 {
			t.Fatalf("parseDuration(%q) = %v: negative", s, d)
		}
		// What parseDuration accepts, time.Duration prints back in a form it accepts too.
		if again, err := parseDuration(d.String()); err != nil || again != d {
			t.Fatalf("parseDuration(%q) = %v, but parseDuration(%q) = %v, %v", s, d, d.String(), again, err)
		}
	})
}

func FuzzParseSignal(f *testing.F) {
	for _, s := range []string{"TERM", "SIGTERM", "term", "sigint", "15", "0", "31", "32", "-1", "KILL", "PWR",
		"SIG", "", "+9", "09", "SIGSIGTERM", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sig, err := parseSignal(s)
		if err != nil {
			return
		}
		if sig < 1 || sig > 31 {
			t.Fatalf("parseSignal(%q) = %d: outside 1-31", s, sig)
		}
		// The name of a signal, as prefork accepts it, reads back as the same signal.
		for name, v := range signalNames {
			if v == sig {
				if again, err := parseSignal("SIG" + name); err != nil || again != sig {
					t.Fatalf("parseSignal(SIG%s) = %v, %v; want %v", name, again, err, sig)
				}
			}
		}
	})
}

func FuzzParseWorkers(f *testing.F) {
	for _, s := range []string{"auto", "1", "4", "0", "-1", "1024", "1025", "AUTO", "", "+3", "0x10", "1e3",
		"99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseWorkers(s)
		if err != nil {
			return
		}
		if n == 0 && s != "auto" {
			t.Fatalf("parseWorkers(%q) = 0 (auto) for a string that is not auto", s)
		}
		if n < 0 || n > maxWorkers {
			t.Fatalf("parseWorkers(%q) = %d: outside 0-%d", s, n, maxWorkers)
		}
	})
}

// FuzzParseArgs feeds whole command lines, arguments separated by NUL bytes.
// parseArgs must never panic, and what it accepts must be a usable configuration.
func FuzzParseArgs(f *testing.F) {
	for _, s := range []string{
		"-n\x002\x00--grace=5s\x00-p8080\x00./server\x00-p\x009000",
		"-p\x001\x00--\x00-weird-name\x00x",
		"--demo\x00-l\x00web=127.0.0.1:0\x00--mode\x00reuseport",
		"--mode=rr\x00-l\x00udp::53\x00true",
		"--watchdog\x001ms\x00true",
		"--ready\x00notify\x00--ready-timeout\x000\x00true",
		"--backoff-min\x005s\x00--backoff-max\x001s\x00true",
		"-h", "--version", "-", "--", "---", "-p", "--=x", "-n=3\x00true", "--stop-signal\x00SIGKILL\x00x",
		"--rr-window\x0070000\x00x", "-qv\x00x", "--user\x00root:root\x00-p\x000\x00x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		args := strings.Split(s, "\x00")
		c, err := parseArgs(args)
		if err != nil {
			if c != nil {
				if ve := c.validate(); ve == nil {
					t.Fatalf("parseArgs(%q): error %v, yet its configuration validates", args, err)
				}
			}
			return
		}
		if c.demo == (len(c.command) > 0) {
			t.Fatalf("parseArgs(%q): demo %v with command %q", args, c.demo, c.command)
		}
		if c.workers < 0 || c.workers > maxWorkers || c.rrWindow < 1 || c.rrWindow > maxRRWindow {
			t.Fatalf("parseArgs(%q): workers %d, rr window %d out of range", args, c.workers, c.rrWindow)
		}
		if c.stopSignal < 1 || c.stopSignal > 31 {
			t.Fatalf("parseArgs(%q): stop signal %d", args, c.stopSignal)
		}
		for _, d := range []time.Duration{c.readyDelay, c.readyTimeout, c.minUptime, c.backoffMin, c.backoffMax,
			c.watchdog, c.grace, c.drainDelay} {
			if d < 0 {
				t.Fatalf("parseArgs(%q): negative duration in %+v", args, c)
			}
		}
		if c.backoffMin <= 0 || c.backoffMin > c.backoffMax {
			t.Fatalf("parseArgs(%q): backoff %v-%v", args, c.backoffMin, c.backoffMax)
		}
		if c.watchdog > 0 && c.watchdog < 10*time.Millisecond {
			t.Fatalf("parseArgs(%q): watchdog %v", args, c.watchdog)
		}
		for _, sp := range c.specs {
			if sp.Network != "tcp" && sp.Network != "udp" && sp.Network != "unix" {
				t.Fatalf("parseArgs(%q): listener %+v", args, sp)
			}
			if c.mode == modeRR && sp.Network == "udp" {
				t.Fatalf("parseArgs(%q): UDP listener in rr mode", args)
			}
		}
		// The command is exactly the tail of the arguments, never read by prefork.
		if n := len(c.command); n > 0 && strings.Join(args[len(args)-n:], "\x00") != strings.Join(c.command, "\x00") {
			t.Fatalf("parseArgs(%q): command %q is not the tail of the arguments", args, c.command)
		}
	})
}

// FuzzParseNotify feeds datagrams as a worker (or anything that reaches its
// socket) may send them.
func FuzzParseNotify(f *testing.F) {
	for _, s := range []string{"READY=1", "READY=1\nSTATUS=serving 3 clients", "STOPPING=1\n", "WATCHDOG=1",
		"STATUS=a=b=c", "=1", "\n\n", "READY", "RE ADY=1", "READY=1\x00junk", "STATUS=\xff\xfe", "A=1\nA=2",
		"RELOADING=1\nMONOTONIC_USEC=123", "\r\nREADY=1\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		msg := parseNotify(b)
		lines := strings.Split(string(b), "\n")
		for k, v := range msg {
			if k == "" || strings.ContainsAny(k, "= \t\n\x00") || strings.Contains(v, "\n") {
				t.Fatalf("parseNotify(%q): bad assignment %q=%q", b, k, v)
			}
			// The last assignment of a key wins, as sd_notify readers do.
			last := ""
			for _, line := range lines {
				if lk, lv, ok := strings.Cut(line, "="); ok && lk == k {
					last = lv
				}
			}
			if v != last {
				t.Fatalf("parseNotify(%q)[%q] = %q, want the last assignment %q", b, k, v, last)
			}
		}
		// Written back one per line, the assignments parse to the same thing.
		var out []string
		for k, v := range msg {
			out = append(out, k+"="+v)
		}
		if again := parseNotify([]byte(strings.Join(out, "\n"))); !maps.Equal(again, msg) {
			t.Fatalf("parseNotify(%q) = %q, but its assignments re-read as %q", b, msg, again)
		}
	})
}
