// This file draws docs/benchmarks.svg: horizontal bars of each contender's
// throughput over its group's baseline, keep-alive and Connection: close side
// by side, with a line at 1×.
package main

import (
	"fmt"
	"html"
	"strings"

	"github.com/prefork/prefork/bench/internal/results"
)

func chart(r *results.Results) string {
	const (
		width  = 760
		left   = 230 // room for the labels
		right  = 60
		barH   = 12
		rowH   = 2*barH + 10
		top    = 56
		groupH = 34
	)
	type bar struct {
		label  string
		ka, cl float64
		note   string
	}
	type group struct {
		title string
		bars  []bar
	}
	var groups []group
	maxR := 1.0
	for _, g := range []struct{ key, title string }{
		{"node", "Node.js app, 2 workers: throughput ÷ Node cluster SCHED_RR"},
		{"go", "Go server, 2 workers: throughput ÷ bare launcher"},
		{"c", "C server, 2 workers: throughput ÷ bare launcher"},
	} {
		base := find(r, g.key, baseline[g.key])
		gr := group{title: g.title}
		for _, t := range r.Throughput {
			if t.Group != g.key {
				continue
			}
			b := bar{label: t.Name}
			if t.Pending != "" || base == nil {
				b.note = "pending"
			} else {
				b.ka, b.cl = ratio(t.KARPS, base.KARPS), ratio(t.CloseRPS, base.CloseRPS)
				maxR = max(maxR, b.ka, b.cl)
			}
			gr.bars = append(gr.bars, b)
		}
		groups = append(groups, gr)
	}
	height := top + 20
	for _, g := range groups {
		height += groupH + len(g.bars)*rowH
	}
	scale := float64(width-left-right) / (maxR * 1.05)
	var s strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&s, format, a...) }
	w(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	w(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	w(`<text x="10" y="20" font-size="15" font-weight="bold">prefork benchmarks: throughput ratios (median of %d paired rounds%s)</text>`+"\n", r.Reps, map[bool]string{true: ", SMOKE RUN", false: ""}[r.Smoke])
	w(`<text x="10" y="38" fill="#555">%d CPUs, %s, %s, %s</text>`+"\n", r.Machine.Nproc, html.EscapeString(r.Machine.CPU), html.EscapeString(r.Machine.Kernel), html.EscapeString(r.Machine.Date))
	w(`<rect x="%d" y="44" width="10" height="10" fill="#4477aa"/><text x="%d" y="53">keep-alive</text>`+"\n", left, left+14)
	w(`<rect x="%d" y="44" width="10" height="10" fill="#ee6677"/><text x="%d" y="53">Connection: close</text>`+"\n", left+90, left+104)
	y := top + 10
	for _, g := range groups {
		y += groupH
		w(`<text x="10" y="%d" font-weight="bold">%s</text>`+"\n", y-10, html.EscapeString(g.title))
		gy := y
		for _, b := range g.bars {
			w(`<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", left-8, y+barH+4, html.EscapeString(b.label))
			if b.note != "" {
				w(`<text x="%d" y="%d" fill="#888">%s</text>`+"\n", left+4, y+barH+4, b.note)
			} else {
				for i, v := range []float64{b.ka, b.cl} {
					color := []string{"#4477aa", "#ee6677"}[i]
					by := y + i*barH
					bw := v * scale
					w(`<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", left, by, bw, barH-1, color)
					w(`<text x="%.1f" y="%d" font-size="10">%.2f×</text>`+"\n", float64(left)+bw+3, by+barH-2, v)
				}
			}
			y += rowH
		}
		x1 := float64(left) + scale
		w(`<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#333" stroke-dasharray="3,3"/>`+"\n", x1, gy-4, x1, y-6)
	}
	w(`<text x="%.1f" y="%d" font-size="10" fill="#333" text-anchor="middle">1×</text>`+"\n", float64(left)+scale, y+8)
	w("</svg>\n")
	return s.String()
}
