// This file holds the Linux side of the pidfile check: when a process started,
// so that a pid reused since the pidfile was written is not taken for prefork.
package main

import (
	"os"
	"strconv"
	"strings"
	"time"
)

// pidStarted returns when process pid started, from /proc (the start time in
// clock ticks after boot, USER_HZ = 100 on every architecture Go supports,
// and the boot time); ok is false when it cannot tell.
func pidStarted(pid int) (t time.Time, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return t, false
	}
	// The command name, in parentheses, may hold spaces: fields count after it.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return t, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return t, false
	}
	ticks, err := strconv.ParseInt(f[19], 10, 64) // field 22: starttime
	if err != nil {
		return t, false
	}
	st, err := os.ReadFile("/proc/stat")
	if err != nil {
		return t, false
	}
	for _, line := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			boot, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return t, false
			}
			return time.Unix(boot, 0).Add(time.Duration(ticks) * 10 * time.Millisecond), true
		}
	}
	return t, false
}
