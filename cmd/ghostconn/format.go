package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/collector"
)

// ANSI colours for verdicts.
const (
	ansiRed    = "\x1b[31m"
	ansiYellow = "\x1b[33m"
	ansiBold   = "\x1b[1m"
	ansiReset  = "\x1b[0m"
)

// colorEnabled reports whether w is a terminal that should get colour: a
// file whose fd answers the terminal ioctl, with NO_COLOR unset and TERM
// not "dumb".
func colorEnabled(w io.Writer) bool {
	if _, set := os.LookupEnv("NO_COLOR"); set {
		return false
	}
	if os.Getenv("TERM") == "dumb" {
		return false
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// painter colours text when colour is on and passes it through otherwise.
type painter bool

func (p painter) paint(code, s string) string {
	if !p || code == "" {
		return s
	}
	return code + s + ansiReset
}

// verdict colours a verdict kind: red for ghost and unresponsive, yellow
// for close-wait and silent.
func (p painter) verdict(kind string) string { return p.paint(verdictColor(kind), kind) }

func (p painter) bold(s string) string { return p.paint(ansiBold, s) }

func verdictColor(kind string) string {
	switch kind {
	case collector.VerdictGhost, collector.VerdictUnresponsive:
		return ansiRed
	case collector.VerdictCloseWait, collector.VerdictSilent:
		return ansiYellow
	}
	return ""
}

// cell is one table cell: the plain text decides the width, the rendered
// text (which may carry colour codes) is printed.
type cell struct{ plain, rendered string }

func plain(s string) cell { return cell{s, s} }

// table prints aligned columns separated by two spaces. Unlike tabwriter
// it measures cells without their colour codes, so colour does not break
// the alignment. The last column is not padded.
type table struct {
	indent string
	header []string
	rows   [][]cell
}

func (t *table) add(cells ...cell) { t.rows = append(t.rows, cells) }

func (t *table) write(w io.Writer) error {
	widths := make([]int, len(t.header))
	for i, h := range t.header {
		widths[i] = utf8.RuneCountInString(h)
	}
	for _, r := range t.rows {
		for i, c := range r {
			if n := utf8.RuneCountInString(c.plain); i < len(widths) && n > widths[i] {
				widths[i] = n
			}
		}
	}
	var b strings.Builder
	line := func(cells []cell) {
		b.WriteString(t.indent)
		for i, c := range cells {
			b.WriteString(c.rendered)
			if i < len(cells)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c.plain)+2))
			}
		}
		b.WriteByte('\n')
	}
	hdr := make([]cell, len(t.header))
	for i, h := range t.header {
		hdr[i] = plain(h)
	}
	line(hdr)
	for _, r := range t.rows {
		line(r)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// humanDuration prints durations the way people read them: 850ms, 42s,
// 3m12s, 5h4m, 2d3h.
func humanDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
}

// secondsDuration renders a duration given in seconds, as the API gives
// them.
func secondsDuration(s float64) string {
	return humanDuration(time.Duration(s * float64(time.Second)))
}

// ago is how long before now t was, never negative.
func ago(now, t time.Time) string {
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	return humanDuration(d)
}

// clock prints a time in local time to the millisecond, with the date
// when it is not today.
func clock(now, t time.Time) string {
	t, now = t.Local(), now.Local()
	if t.Year() == now.Year() && t.YearDay() == now.YearDay() {
		return t.Format("15:04:05.000")
	}
	return t.Format("2006-01-02 15:04:05.000")
}

// proc names a process compactly: comm/pid.
func proc(comm string, pid uint32) string { return fmt.Sprintf("%s/%d", comm, pid) }

// shared reports whether more than one fd (in one or more processes)
// refers to the socket.
func shared(hs []collector.Holder) bool { return len(hs) > 1 }

// processText is the PROCESS column: the first holder, "+N" for the other
// holders and "*" when the socket is shared; "-" when no process has an fd
// of the socket, "?" when that is not known yet.
func processText(v *collector.ConnView) string {
	if len(v.Holders) == 0 {
		if !v.HoldersKnown {
			return "?"
		}
		return "-"
	}
	return holdersShort(v.Holders)
}

// holdersShort names the first holder, with "+N*" for the others; empty
// when there are none.
func holdersShort(hs []collector.Holder) string {
	if len(hs) == 0 {
		return ""
	}
	s := proc(hs[0].Comm, hs[0].PID)
	if shared(hs) {
		s += fmt.Sprintf(" +%d*", len(hs)-1)
	}
	return s
}

// holdersList names every holder with its fd: "curl/12 fd=3, sleep/14 fd=3".
func holdersList(hs []collector.Holder) string {
	if len(hs) == 0 {
		return "-"
	}
	parts := make([]string, len(hs))
	for i, h := range hs {
		parts[i] = fmt.Sprintf("%s fd=%d", proc(h.Comm, h.PID), h.FD)
	}
	return strings.Join(parts, ", ")
}

// sharedSummary says how a shared socket is held: "3 fds in 2 processes".
func sharedSummary(hs []collector.Holder) string {
	pids := map[uint32]bool{}
	for _, h := range hs {
		pids[h.PID] = true
	}
	return fmt.Sprintf("%s in %s", plural(len(hs), "fd", "fds"), plural(len(pids), "process", "processes"))
}

func plural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}

// keepaliveText is the KEEPALIVE column: "on 1s/1s/4 socket" (idle,
// interval, count, where the values come from) or "off".
func keepaliveText(k collector.Keepalive) string {
	if !k.Enabled {
		return "off"
	}
	return fmt.Sprintf("on %s/%s/%d %s", secondsDuration(k.IdleSeconds), secondsDuration(k.IntervalSeconds), k.Count, k.Source)
}

// verdictsCell lists the verdict kinds, each in its colour.
func verdictsCell(p painter, vs []collector.Verdict) cell {
	if len(vs) == 0 {
		return plain("-")
	}
	kinds := make([]string, len(vs))
	painted := make([]string, len(vs))
	for i, v := range vs {
		kinds[i] = v.Kind
		painted[i] = p.verdict(v.Kind)
	}
	return cell{strings.Join(kinds, ","), strings.Join(painted, ",")}
}

func idleText(v *collector.ConnView) string {
	if v.IdleSeconds == nil {
		return "-"
	}
	return secondsDuration(*v.IdleSeconds)
}
