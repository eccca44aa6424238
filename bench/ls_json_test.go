package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/ghostconn/ghostconn/collector"
)

// conns returns n connection views shaped like what the agent serves for
// established loopback connections held by a process.
func conns(n int) []collector.ConnView {
	out := make([]collector.ConnView, n)
	now := time.Now()
	uid := uint32(0)
	for i := range out {
		idle := float64(i%600) + 0.25
		local := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 1, byte(i % 10)}), uint16(32768+i%28000))
		remote := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 40000)
		out[i] = collector.ConnView{
			Cookie:      uint64(4096 + i),
			Family:      "ipv4",
			State:       collector.StateEstablished,
			Local:       local.String(),
			Remote:      remote.String(),
			Netns:       4026531840,
			Inode:       uint64(100000 + i),
			UID:         &uid,
			Holders:     []collector.Holder{{PID: uint32(1000 + i%10), PPID: 999, Comm: "ghostbench", FD: int32(3 + i%10000)}},
			Keepalive:   collector.Keepalive{IdleSeconds: 7200, IntervalSeconds: 75, Count: 9, Source: "sysctl"},
			IdleSeconds: &idle,
			FirstSeen:   now.Add(-time.Duration(i) * time.Millisecond),
			StateSince:  now.Add(-time.Duration(i) * time.Millisecond),
			Verdicts:    []collector.Verdict{},
		}
	}
	return out
}

var sizes = []int{1000, 100000}

// BenchmarkLsEncodeAPI is the agent's share of `ghostconn ls`: writeJSON's
// json.Encoder over the whole list.
func BenchmarkLsEncodeAPI(b *testing.B) {
	for _, n := range sizes {
		cs := conns(n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			var buf bytes.Buffer
			b.ReportAllocs()
			for b.Loop() {
				buf.Reset()
				if err := json.NewEncoder(&buf).Encode(cs); err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(int64(buf.Len()))
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/conn")
		})
	}
}

// BenchmarkLsDecodeCLI is the client's json.Unmarshal of the API's answer.
func BenchmarkLsDecodeCLI(b *testing.B) {
	for _, n := range sizes {
		body, err := json.Marshal(conns(n))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				var out []collector.ConnView
				if err := json.Unmarshal(body, &out); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/conn")
		})
	}
}

// BenchmarkLsPrintIndented is the CLI's `-o json` output: an indented
// re-encode of what it decoded.
func BenchmarkLsPrintIndented(b *testing.B) {
	for _, n := range sizes {
		cs := conns(n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			var cw countWriter
			b.ReportAllocs()
			for b.Loop() {
				enc := json.NewEncoder(&cw)
				enc.SetIndent("", "  ")
				if err := enc.Encode(cs); err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(cw.n / int64(b.N))
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/conn")
		})
	}
}

// BenchmarkLsIndentRaw is what `-o json` would cost if the CLI indented the
// API's bytes (json.Indent) instead of decoding and re-encoding them.
func BenchmarkLsIndentRaw(b *testing.B) {
	for _, n := range sizes {
		body, err := json.Marshal(conns(n))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			var buf bytes.Buffer
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				buf.Reset()
				if err := json.Indent(&buf, body, "", "  "); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/conn")
		})
	}
}

type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}
