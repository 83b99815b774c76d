//go:build linux || darwin

// This file tests, through the fake world of slots_test.go, what the
// supervisor does with what the listenwait watcher reports: a worker seen
// waiting is up; one that cannot be seen falls back to the delay rule under
// --ready auto; under --ready listen READY=1 does not count.
package main

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/prefork/prefork/internal/listenwait"
)

func TestReadyByWhatTheWatcherReports(t *testing.T) {
	for name, c := range map[string]struct {
		rule   readyRule
		report listenwait.Report // for pid 101; zero: none
		notify bool              // it sends READY=1
		pass   time.Duration
		want   []string
		up     upBy // how it is up; upNot: still starting
	}{
		"auto seen": {rule: readyAuto, report: listenwait.Report{PID: 101, Way: listenwait.Epoll},
			want: nil, up: upSeen},
		"auto not seen yet": {rule: readyAuto, pass: 30 * time.Second, up: upNot},
		"auto READY=1":      {rule: readyAuto, notify: true, want: []string{"unwatch 101"}, up: upNotify},
		"auto cannot see": {rule: readyAuto, report: listenwait.Report{PID: 101, Err: listenwait.ErrCannotObserve},
			pass: time.Second, want: []string{"timer 1s ready-delay 101"}, up: upDelay},
		"listen seen":    {rule: readyOnListen, report: listenwait.Report{PID: 101, Way: listenwait.Accept}, up: upSeen},
		"listen READY=1": {rule: readyOnListen, notify: true, up: upNot},
		"listen cannot see": {rule: readyOnListen, report: listenwait.Report{PID: 101, Err: listenwait.ErrCannotObserve},
			pass: 30 * time.Second, up: upNot},
	} {
		t.Run(name, func(t *testing.T) {
			s, f := fakeSupervisor()
			s.c.ready = c.rule
			s.env.watch = f.watch
			sl, _ := s.addSlot()
			s.startIn(sl)
			if want := []string{"start 0: 101", "watch 101", "timer 1m0s ready-timeout 101"}; !slices.Equal(f.did, want) {
				t.Fatalf("the start: the world saw %q, want %q", f.did, want)
			}
			f.did = nil
			if c.report.PID != 0 {
				s.handle(listenEvent{c.report})
			}
			if c.notify {
				s.notified(sl.cur, map[string]string{"READY": "1"})
			}
			f.advance(s, c.pass)
			if !slices.Equal(f.did, c.want) {
				t.Errorf("the world saw %q, want %q", f.did, c.want)
			}
			w := sl.cur
			if got := fmt.Sprint(w.state, " ", w.upBy); w.upBy != c.up || (c.up == upNot) != (w.state == stateStarting) {
				t.Errorf("worker %s, want up by %q", got, c.up)
			}
		})
	}
}

// Under --ready auto a worker not seen by --ready-timeout comes up by the
// delay rule, and the next one comes up after --ready-delay, until one is
// seen waiting again.
func TestReadyAutoLearnsOncePerRun(t *testing.T) {
	s, f := fakeSupervisor()
	s.env.watch = f.watch
	sl, _ := s.addSlot()
	s.startIn(sl)
	f.advance(s, time.Minute)
	if sl.cur.upBy != upDelay {
		t.Fatalf("up by %q at --ready-timeout, want delay", sl.cur.upBy)
	}
	f.did = nil
	s.replace(sl, whyReload)
	if want := []string{"start 0: 102", "watch 102", "timer 1s ready-delay 102"}; !slices.Equal(f.did, want) {
		t.Errorf("the next worker: the world saw %q, want %q (the delay rule, still watched)", f.did, want)
	}
	s.handle(listenEvent{listenwait.Report{PID: 102, Way: listenwait.Poll}})
	if sl.cur.pid != 102 || sl.cur.upBy != upSeen {
		t.Fatalf("cur %d up by %q, want 102 seen waiting", sl.cur.pid, sl.cur.upBy)
	}
	f.did = nil
	s.replace(sl, whyReload)
	if want := []string{"start 0: 103", "watch 103", "timer 1m0s ready-timeout 103"}; !slices.Equal(f.did, want) {
		t.Errorf("once one was seen: the world saw %q, want %q (waiting to be seen again)", f.did, want)
	}
}
