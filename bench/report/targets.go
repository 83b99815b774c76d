// This file checks the measured figures against the project's targets; a
// verdict is what the medians say, never adjusted.
package main

import (
	"fmt"
	"strings"

	"github.com/prefork/prefork/bench/internal/results"
)

type target struct{ what, measured, verdict string }

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func targets(r *results.Results) []target {
	var ts []target
	rr := find(r, "node", "cluster SCHED_RR")
	for _, name := range []string{"prefork shared", "prefork reuseport"} {
		p := find(r, "node", name)
		if p == nil || rr == nil || len(p.CloseRPS) == 0 || len(rr.CloseRPS) == 0 {
			continue
		}
		c, k := ratio(p.CloseRPS, rr.CloseRPS), ratio(p.KARPS, rr.KARPS)
		ts = append(ts,
			target{"Node app under " + name + " ≥ 2.2× Node cluster round robin, `Connection: close`", fmt.Sprintf("%.2f×", c), verdict(c >= 2.2)},
			target{"Node app under " + name + " no slower than cluster round robin, keep-alive", fmt.Sprintf("%.2f×", k), verdict(k >= 1.0)})
	}
	for _, g := range []struct{ group, server string }{{"go", "Go server"}, {"c", "C server"}} {
		bare := find(r, g.group, "bare launcher")
		for _, name := range []string{"prefork shared", "prefork reuseport"} {
			p := find(r, g.group, name)
			if p == nil || bare == nil || len(p.CloseRPS) == 0 || len(bare.CloseRPS) == 0 {
				continue
			}
			c, k := ratio(p.CloseRPS, bare.CloseRPS), ratio(p.KARPS, bare.KARPS)
			ts = append(ts,
				target{g.server + " under " + name + " ≥ 0.98× bare, churn (conn/s)", fmt.Sprintf("%.2f×", c), verdict(c >= 0.98)},
				target{g.server + " under " + name + " ≥ 0.98× bare, keep-alive", fmt.Sprintf("%.2f×", k), verdict(k >= 0.98)})
		}
	}
	for _, l := range r.Lifecycle {
		ms := results.Median(l.Ms)
		switch {
		case strings.HasPrefix(l.Name, "startup: prefork --mode shared, 64 Go workers"):
			ts = append(ts, target{"64 workers all answering < 0.5 s (shared)", fmt.Sprintf("%.2f s", ms/1000), verdict(ms < 500)})
		case strings.HasPrefix(l.Name, "startup: prefork, 1024 sleep workers"):
			ts = append(ts, target{"1,024 `sleep` workers started < 5 s", fmt.Sprintf("%.2f s", ms/1000), verdict(ms < 5000)})
		case strings.HasPrefix(l.Name, "restart: prefork --mode") && strings.HasSuffix(l.Name, "replacement answering"):
			ts = append(ts, target{"SIGKILL to replacement answering < 20 ms (" + strings.Fields(l.Name)[3] + ")", fmt.Sprintf("%.1f ms", ms), verdict(ms < 20)})
		}
	}
	for _, m := range r.Memory {
		if strings.HasPrefix(m.Name, "prefork, 4 ") {
			mb := results.Median(m.KiB) / 1024
			ts = append(ts, target{"prefork RSS < 5 MB with 4 workers", fmt.Sprintf("%.1f MB", mb), verdict(mb < 5)})
		}
	}
	for _, g := range []struct{ group, server string }{{"go", "Go worker package"}, {"c", "C workers"}} {
		rrRow, shared, ref := find(r, g.group, "prefork rr"), find(r, g.group, "prefork shared"), find(r, g.group, "reference master")
		switch {
		case rrRow == nil || shared == nil:
			continue
		case rrRow.Pending != "":
			ts = append(ts, target{"rr ≥ 0.85× shared under churn (" + g.server + ")", rrRow.Pending, "pending"})
			continue
		}
		c := ratio(rrRow.CloseRPS, shared.CloseRPS)
		ts = append(ts, target{"rr ≥ 0.85× shared under churn (" + g.server + ")", fmt.Sprintf("%.2f×", c), verdict(c >= 0.85)})
		if ref != nil && ref.Pending == "" {
			c := ratio(rrRow.CloseRPS, ref.CloseRPS)
			ts = append(ts, target{"rr ≥ 0.9× the reference master under churn (" + g.server + ")", fmt.Sprintf("%.2f×; prefork %.1f µs/conn, reference %.1f", c,
				results.Median(rrRow.CloseCPU), results.Median(ref.CloseCPU)), verdict(c >= 0.9)})
		}
		for _, d := range r.Distribution {
			if d.Group == g.group && d.Name == "prefork rr" && len(d.Counts) > 0 {
				var dev []float64
				for _, c := range d.Counts {
					dev = append(dev, results.MaxDev(c))
				}
				worst := dev[0]
				for _, x := range dev {
					worst = max(worst, x)
				}
				ts = append(ts, target{"rr per-worker counts within ±5% (" + g.server + ", " + d.Load + " load)", fmt.Sprintf("±%.1f%% (worst repetition)", 100*worst), verdict(worst <= 0.05)})
			}
		}
	}
	return ts
}
