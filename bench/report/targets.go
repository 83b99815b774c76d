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
	bare := find(r, "go", "bare launcher")
	for _, name := range []string{"prefork shared", "prefork reuseport"} {
		p := find(r, "go", name)
		if p == nil || bare == nil || len(p.CloseRPS) == 0 || len(bare.CloseRPS) == 0 {
			continue
		}
		c, k := ratio(p.CloseRPS, bare.CloseRPS), ratio(p.KARPS, bare.KARPS)
		ts = append(ts,
			target{"Go server under " + name + " ≥ 0.95× bare, churn (conn/s)", fmt.Sprintf("%.2f×", c), verdict(c >= 0.95)},
			target{"Go server under " + name + " ≥ 0.95× bare, keep-alive", fmt.Sprintf("%.2f×", k), verdict(k >= 0.95)})
	}
	for _, m := range r.Memory {
		if strings.HasPrefix(m.Name, "prefork, 4 ") {
			mb := results.Median(m.KiB) / 1024
			ts = append(ts, target{"prefork RSS ≤ 6 MB with 4 workers", fmt.Sprintf("%.1f MB", mb), verdict(mb <= 6)})
		}
	}
	rrRow, shared := find(r, "go", "prefork rr"), find(r, "go", "prefork shared")
	switch {
	case rrRow == nil || shared == nil:
	case rrRow.Pending != "":
		ts = append(ts, target{"rr ≥ 0.8× shared under churn, per-worker counts within ±5%", rrRow.Pending, "pending"})
	default:
		c := ratio(rrRow.CloseRPS, shared.CloseRPS)
		ts = append(ts, target{"rr ≥ 0.8× shared under churn (Go server)", fmt.Sprintf("%.2f×", c), verdict(c >= 0.8)})
		for _, d := range r.Distribution {
			if d.Group == "go" && d.Name == "prefork rr" && len(d.Counts) > 0 {
				var dev []float64
				for _, c := range d.Counts {
					dev = append(dev, results.MaxDev(c))
				}
				worst := dev[0]
				for _, x := range dev {
					worst = max(worst, x)
				}
				ts = append(ts, target{"rr per-worker counts within ±5% (" + d.Load + " load)", fmt.Sprintf("±%.1f%% (worst repetition)", 100*worst), verdict(worst <= 0.05)})
			}
		}
	}
	return ts
}
