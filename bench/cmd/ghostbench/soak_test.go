package main

import (
	"math"
	"strings"
	"testing"
)

func TestLeastSquares(t *testing.T) {
	xs := []float64{1, 2, 3, 4, 5}
	ys := []float64{3, 5, 7, 9, 11} // y = 1 + 2x
	f := leastSquares(xs, ys)
	if math.Abs(f.slope-2) > 1e-9 || f.se > 1e-9 {
		t.Fatalf("slope %v ± %v, want 2 ± 0", f.slope, f.se)
	}
	if f.first != 3 || f.last != 11 || f.lo != 3 || f.hi != 11 || f.n != 5 {
		t.Fatalf("summary %+v", f)
	}
	flat := leastSquares(xs, []float64{10, 12, 10, 12, 10})
	if math.Abs(flat.slope) > 0.5 || flat.se <= 0 {
		t.Fatalf("flat: slope %v ± %v", flat.slope, flat.se)
	}
	if f := leastSquares(xs[:2], ys[:2]); !math.IsNaN(f.slope) {
		t.Fatalf("two points gave slope %v, want NaN", f.slope)
	}
}

func TestParseMetrics(t *testing.T) {
	in := `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 13
process_resident_memory_bytes 9.4269440e+07
ghostconn_events_lost_total{event="close"} 0
ghostconn_events_lost_total{event="state"} 5435
ghostconn_events_lost_total{event="sockopt"} 2
ghostconn_connections{state="ESTABLISHED",x="a b}"} 7
ghostconn_reconcile_duration_seconds_sum 1.5
`
	m, err := parseMetrics(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		"go_goroutines":                            13,
		"process_resident_memory_bytes":            94269440,
		"ghostconn_events_lost_total":              5437,
		"ghostconn_connections":                    7,
		"ghostconn_reconcile_duration_seconds_sum": 1.5,
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
}
