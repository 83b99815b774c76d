//go:build unix

// This file measures what is not throughput: supervisor memory (VmRSS), the
// time until 64 workers are all up, and the time from a worker's SIGKILL until
// its replacement answers.
package main

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prefork/prefork/bench/internal/results"
)

// memory measures resident memory of each supervisor with idle workers.
func memory(res *results.Results, reps int) error {
	add := func(name string, kib float64) {
		for i := range res.Memory {
			if res.Memory[i].Name == name {
				res.Memory[i].KiB = append(res.Memory[i].KiB, kib)
				return
			}
		}
		res.Memory = append(res.Memory, results.Mem{Name: name, KiB: []float64{kib}})
	}
	for rep := 0; rep < reps; rep++ {
		for _, n := range []int{2, 4, 64} {
			port := nextPort()
			p, err := startPrefork(port, n, "shared", []string{"--ready", "delay", "--ready-delay", "50ms"}, "sleep", "1000000")
			if err != nil {
				return fmt.Errorf("memory, prefork -n %d: %w", n, err)
			}
			time.Sleep(300 * time.Millisecond)
			kib, err := rssKiB(p.cmd.Process.Pid)
			p.Stop()
			if err != nil {
				return err
			}
			add(fmt.Sprintf("prefork, %d idle workers (sleep)", n), kib)
		}
		port := nextPort()
		p, err := start([]string{"SCHED=rr", "WORKERS=2", "PORT=" + strconv.Itoa(port)}, nodePath, benchDir+"/cluster.js")
		if p, err = answering(p, port, err); err != nil {
			return fmt.Errorf("memory, node cluster: %w", err)
		}
		time.Sleep(300 * time.Millisecond)
		kib, err := rssKiB(p.cmd.Process.Pid)
		p.Stop()
		if err != nil {
			return err
		}
		add("Node cluster primary, 2 workers", kib)

		port = nextPort()
		p, err = start(nil, binPath("barelaunch"), "-addr", fmt.Sprintf("127.0.0.1:%d", port), "-n", "2", "--", binPath("goserver"))
		if p, err = answering(p, port, err); err != nil {
			return fmt.Errorf("memory, bare launcher: %w", err)
		}
		kib, err = rssKiB(p.cmd.Process.Pid)
		p.Stop()
		if err != nil {
			return err
		}
		add("bare launcher (Go), 2 workers", kib)

		if pm2Pending == "" {
			port = nextPort()
			p, err := startPM2(port)
			if err != nil {
				return fmt.Errorf("memory, pm2: %w", err)
			}
			time.Sleep(300 * time.Millisecond)
			pid, err := pm2GodPID()
			if err == nil {
				kib, err = rssKiB(pid)
			}
			p.Stop()
			if err != nil {
				return fmt.Errorf("memory, pm2 God daemon: %w", err)
			}
			add("PM2 God daemon, 2 workers", kib)
		}
	}
	return nil
}

// startup times prefork from exec until N Go workers have all said READY=1
// (after their listener is up) and a request is answered.
func startup(res *results.Results, reps, n int, modes []string) error {
	for _, mode := range modes {
		life := results.Life{Name: fmt.Sprintf("startup: prefork --mode %s, %d Go workers all ready and answering", mode, n)}
		for rep := 0; rep < reps; rep++ {
			port := nextPort()
			t0 := time.Now()
			p, err := startPrefork(port, n, mode, []string{"--ready", "notify"}, binPath("goserver"))
			if err != nil {
				return fmt.Errorf("startup %s: %w", mode, err)
			}
			_, err = getPid(port, 5*time.Second)
			ms := float64(time.Since(t0).Microseconds()) / 1000
			p.Stop()
			if err != nil {
				return fmt.Errorf("startup %s: %w", mode, err)
			}
			life.Ms = append(life.Ms, ms)
		}
		res.Lifecycle = append(res.Lifecycle, life)
	}
	return nil
}

// spawnMany times prefork from exec until n `sleep` workers are all up (alive
// 10 ms, --ready delay: sleep never waits for connections), by the status
// file: the pace of spawning alone.
func spawnMany(res *results.Results, reps, n int) error {
	life := results.Life{Name: fmt.Sprintf("startup: prefork, %d sleep workers all started (--ready-delay 10ms)", n)}
	for rep := 0; rep < reps; rep++ {
		port := nextPort()
		t0 := time.Now()
		p, err := startPrefork(port, n, "shared", []string{"--ready", "delay", "--ready-delay", "10ms"}, "sleep", "1000000")
		if err != nil {
			return fmt.Errorf("startup of %d sleep workers: %w", n, err)
		}
		life.Ms = append(life.Ms, float64(time.Since(t0).Microseconds())/1000)
		p.Stop()
	}
	res.Lifecycle = append(res.Lifecycle, life)
	// The kernel's pace: the same number of ForkExec calls with nothing
	// around them, straight and through prefork's exec shim.
	for _, shim := range []bool{false, true} {
		ref := results.Life{Name: fmt.Sprintf("reference: %d ForkExec of sleep in a row, no supervisor (bench/spawnref)", n)}
		args := []string{"-n", strconv.Itoa(n)}
		if shim {
			ref.Name = fmt.Sprintf("reference: %d ForkExec of sleep through prefork's exec shim, no supervisor", n)
			args = append(args, "-shim", binPath("prefork"))
		}
		for rep := 0; rep < reps; rep++ {
			out, err := exec.Command(binPath("spawnref"), append(args, "--", "sleep", "1000000")...).Output()
			if err != nil {
				return fmt.Errorf("spawnref: %w", err)
			}
			ms, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
			if err != nil {
				return fmt.Errorf("spawnref: %q", out)
			}
			ref.Ms = append(ref.Ms, ms)
		}
		res.Lifecycle = append(res.Lifecycle, ref)
	}
	return nil
}

// restart SIGKILLs slot 0's worker `kills` times and times until the status
// file shows its replacement ready, and until the replacement answers a
// request.
func restart(res *results.Results, kills int, modes []string) error {
	for _, mode := range modes {
		ready := results.Life{Name: fmt.Sprintf("restart: prefork --mode %s, SIGKILL to replacement READY=1", mode)}
		answers := results.Life{Name: fmt.Sprintf("restart: prefork --mode %s, SIGKILL to replacement answering", mode)}
		port := nextPort()
		sf := statusPath(port)
		p, err := startPrefork(port, workers, mode, []string{"--ready", "notify", "--min-uptime", "100ms"}, binPath("goserver"))
		if err != nil {
			return fmt.Errorf("restart %s: %w", mode, err)
		}
		for k := 0; k < kills; k++ {
			time.Sleep(200 * time.Millisecond) // past --min-uptime: a plain crash, no backoff
			s, err := readStatus(sf)
			if err != nil || len(s.Workers) == 0 {
				p.Stop()
				return fmt.Errorf("restart %s: status: %v", mode, err)
			}
			old := s.Workers[0].PID
			t0 := time.Now()
			syscall.Kill(old, syscall.SIGKILL)
			s, err = waitStatus(sf, p, 5*time.Second, func(s status) bool {
				for _, w := range s.Workers {
					if w.Slot == 0 && w.PID != old && w.State == "ready" {
						return true
					}
				}
				return false
			})
			if err != nil {
				p.Stop()
				return fmt.Errorf("restart %s: replacement: %w", mode, err)
			}
			t1 := time.Since(t0)
			var nw int
			for _, w := range s.Workers {
				if w.Slot == 0 && w.State == "ready" {
					nw = w.PID
				}
			}
			if !answeredBy(port, strconv.Itoa(nw), 3*time.Second) {
				p.Stop()
				return fmt.Errorf("restart %s: replacement pid %d never answered in 3s", mode, nw)
			}
			t2 := time.Since(t0)
			ready.Ms = append(ready.Ms, float64(t1.Microseconds())/1000)
			answers.Ms = append(answers.Ms, float64(t2.Microseconds())/1000)
		}
		p.Stop()
		res.Lifecycle = append(res.Lifecycle, ready, answers)
	}
	return nil
}

// answeredBy sends requests from 4 loops until one is answered by pid.
func answeredBy(port int, pid string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		found bool
	)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				mu.Lock()
				f := found
				mu.Unlock()
				if f {
					return
				}
				if got, err := getPid(port, time.Second); err == nil && got == pid {
					mu.Lock()
					found = true
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return found
}
