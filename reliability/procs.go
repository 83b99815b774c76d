//go:build linux

// This file reads the process table from /proc: the descendants of a process,
// which of them are still alive later, and which are zombies.
package main

import (
	"os"
	"strconv"
	"strings"
)

// proc identifies a process across pid reuse: its pid and its start time.
type proc struct {
	pid   int
	start string
}

type procInfo struct {
	proc
	ppid  int
	state byte
	comm  string
}

func readProc(pid int) (procInfo, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procInfo{}, false
	}
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < 0 || end+2 >= len(s) {
		return procInfo{}, false
	}
	f := strings.Fields(s[end+2:]) // state ppid pgrp ... starttime is field 22 of stat
	if len(f) < 20 {
		return procInfo{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	return procInfo{proc{pid, f[19]}, ppid, f[0][0], s[open+1 : end]}, true
}

func allProcs() []procInfo {
	ents, _ := os.ReadDir("/proc")
	var ps []procInfo
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			if p, ok := readProc(pid); ok {
				ps = append(ps, p)
			}
		}
	}
	return ps
}

// descendants lists every process below root (not root itself).
func descendants(root int) []procInfo {
	ps := allProcs()
	children := map[int][]procInfo{}
	for _, p := range ps {
		children[p.ppid] = append(children[p.ppid], p)
	}
	var out []procInfo
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			out = append(out, c)
			queue = append(queue, c.pid)
		}
	}
	return out
}

// stillAlive returns those of ps that run on (zombies count as gone).
func stillAlive(ps []procInfo) []procInfo {
	var out []procInfo
	for _, p := range ps {
		if now, ok := readProc(p.pid); ok && now.start == p.start && now.state != 'Z' {
			out = append(out, now)
		}
	}
	return out
}
