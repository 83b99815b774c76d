// This file tests the pool's options as prefork reads them; the policy's
// decisions are tested in internal/pool.
package main

import (
	"testing"
	"time"
)

func TestPoolOptions(t *testing.T) {
	c, err := parseArgs([]string{"-n", "2:16", "--idle-timeout", "3s", "--max-lifetime", "1h", "./server"})
	if err != nil {
		t.Fatal(err)
	}
	if c.workers != 2 || c.poolMin != 2 || c.poolMax != 16 || c.idleTimeout != 3*time.Second || c.maxLifetime != time.Hour {
		t.Fatalf("read wrong: %+v", c)
	}
	if c, err = parseArgs([]string{"-n", "1:4", "-n", "3", "./server"}); err != nil || c.poolMax != 0 || c.workers != 3 {
		t.Fatalf("a later -n N must make the pool fixed: %+v %v", c, err)
	}
	if c, _ = parseArgs([]string{"-n", "1:4", "./server"}); c.idleTimeout != 10*time.Second {
		t.Fatalf("default --idle-timeout %v, want 10s", c.idleTimeout)
	}
}
