//go:build linux

// Command spawnref is the reference of the benchmarks for starting many
// workers: the kernel's pace. It forks and execs N copies of a command one
// after another with syscall.ForkExec (clone with CLONE_VFORK|CLONE_VM, as
// prefork's spawner), with no supervisor around it, optionally through
// prefork's exec shim, and prints the milliseconds until every copy runs the
// command (its /proc/PID/comm changes), then kills them all.
//
//	spawnref -n 1024 [-shim /path/to/prefork] -- sleep 1000000
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

func main() {
	n := flag.Int("n", 1024, "copies")
	shim := flag.String("shim", "", "prefork binary: start each copy through its exec shim")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: spawnref [-n N] [-shim PREFORK] -- command [args...]")
		os.Exit(2)
	}
	path, err := exec.LookPath(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "spawnref:", err)
		os.Exit(1)
	}
	argv0, argv := path, flag.Args()
	if *shim != "" {
		argv0, argv = *shim, append([]string{"prefork-exec", path}, argv...)
	}
	env := append(os.Environ(), "PREFORK_SHIM_EXEC=1", fmt.Sprintf("PREFORK_SHIM_PPID=%d", os.Getpid()))
	attr := &syscall.ProcAttr{Env: env, Files: []uintptr{0, 1, 2},
		Sys: &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}}
	comm := filepath.Base(path)
	if len(comm) > 15 {
		comm = comm[:15]
	}
	pids := make([]int, 0, *n)
	defer func() {
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
			var ws syscall.WaitStatus
			syscall.Wait4(pid, &ws, 0, nil)
		}
	}()
	t0 := time.Now()
	for i := 0; i < *n; i++ {
		pid, err := syscall.ForkExec(argv0, argv, attr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "spawnref:", err)
			return
		}
		pids = append(pids, pid)
	}
	for _, pid := range pids {
		for {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			if err != nil || string(b) == comm+"\n" {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	fmt.Printf("%.1f\n", float64(time.Since(t0).Microseconds())/1000)
}
