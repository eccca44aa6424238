package main

import (
	"bytes"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ghostconn/ghostconn/collector"
)

func TestHumanDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		850 * time.Millisecond:         "850ms",
		42 * time.Second:               "42s",
		3*time.Minute + 12*time.Second: "3m12s",
		5*time.Hour + 4*time.Minute:    "5h4m",
		51 * time.Hour:                 "2d3h",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%s) = %q, want %q", d, got, want)
		}
	}
	now := time.Now()
	if got := ago(now, now.Add(time.Minute)); got != "0ms" {
		t.Errorf("ago of a future time = %q, want 0ms", got)
	}
}

// Colour codes do not count toward column widths.
func TestTableAlignsColouredCells(t *testing.T) {
	p := painter(true)
	tb := table{header: []string{"A", "VERDICTS", "Z"}}
	tb.add(plain("x"), verdictsCell(p, []collector.Verdict{{Kind: "ghost"}, {Kind: "silent"}}), plain("1"))
	tb.add(plain("longer"), verdictsCell(p, nil), plain("2"))
	var b bytes.Buffer
	if err := tb.write(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "\x1b[31mghost\x1b[0m,\x1b[33msilent\x1b[0m") {
		t.Errorf("verdicts not coloured:\n%q", b.String())
	}
	stripped := regexp.MustCompile("\x1b\\[[0-9;]*m").ReplaceAllString(b.String(), "")
	want := "A       VERDICTS      Z\nx       ghost,silent  1\nlonger  -             2\n"
	if stripped != want {
		t.Errorf("table\n%s\nwant\n%s", stripped, want)
	}
	if painter(false).verdict("ghost") != "ghost" {
		t.Error("colour without a terminal")
	}
}

func TestColorEnabled(t *testing.T) {
	if colorEnabled(&bytes.Buffer{}) {
		t.Error("colour for a buffer")
	}
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if colorEnabled(f) {
		t.Error("colour for a regular file")
	}
}

func TestColumns(t *testing.T) {
	hs := []collector.Holder{{PID: 10, Comm: "nginx", FD: 3}, {PID: 11, Comm: "nginx", FD: 3}, {PID: 11, Comm: "nginx", FD: 7}}
	v := collector.ConnView{Holders: hs}
	if got := processText(&v); got != "nginx/10 +2*" {
		t.Errorf("processText = %q", got)
	}
	if got := holdersList(hs); got != "nginx/10 fd=3, nginx/11 fd=3, nginx/11 fd=7" {
		t.Errorf("holdersList = %q", got)
	}
	if got := sharedSummary(hs); got != "3 fds in 2 processes" {
		t.Errorf("sharedSummary = %q", got)
	}
	if got := processText(&collector.ConnView{HoldersKnown: true}); got != "-" {
		t.Errorf("processText without holders = %q", got)
	}
	if got := processText(&collector.ConnView{}); got != "?" {
		t.Errorf("processText with holders not yet known = %q, want ?", got)
	}
	if got := keepaliveText(collector.Keepalive{Enabled: true, IdleSeconds: 1, IntervalSeconds: 1, Count: 4, Source: "socket"}); got != "on 1s/1s/4 socket" {
		t.Errorf("keepaliveText = %q", got)
	}
	if got := keepaliveText(collector.Keepalive{IdleSeconds: 7200}); got != "off" {
		t.Errorf("keepaliveText(off) = %q", got)
	}
}

func TestChangeLine(t *testing.T) {
	at := time.Date(2026, 1, 2, 12, 0, 1, 123e6, time.Local)
	task := &collector.Task{PID: 1234, Comm: "curl"}
	for _, c := range []struct {
		ch   collector.Change
		want string
	}{
		{collector.Change{Time: at, Type: "state", Local: "127.0.0.1:5000", Remote: "127.0.0.1:80", From: collector.StateEstablished, State: collector.StateFinWait1, Source: "kernel", Task: task},
			"12:00:01.123 STATE ESTABLISHED->FIN_WAIT1 127.0.0.1:5000 -> 127.0.0.1:80 curl/1234"},
		{collector.Change{Time: at, Type: "state", Local: "127.0.0.1:5000", Remote: "127.0.0.1:80", State: collector.StateTimeWait, Source: "snapshot"},
			"12:00:01.123 STATE TIME_WAIT 127.0.0.1:5000 -> 127.0.0.1:80 (snapshot)"},
		{collector.Change{Time: at, Type: "verdict", Local: "127.0.0.1:5000", Remote: "127.0.0.1:80", Holders: []collector.Holder{{PID: 7, Comm: "a"}, {PID: 8, Comm: "b"}}, Verdict: &collector.Verdict{Kind: "ghost", Detail: "why"}},
			"12:00:01.123 VERDICT ghost 127.0.0.1:5000 -> 127.0.0.1:80 a/7 +1*: why"},
		{collector.Change{Time: at, Type: "cleared", Local: "127.0.0.1:5000", Remote: "127.0.0.1:80", Task: task, Verdict: &collector.Verdict{Kind: "silent"}},
			"12:00:01.123 CLEARED silent 127.0.0.1:5000 -> 127.0.0.1:80 curl/1234"},
		{collector.Change{Time: at, Type: "lost", Lost: 12},
			"12:00:01.123 LOST 12 changes (this watcher read too slowly)"},
		{collector.Change{Time: at, Type: "action", Local: "127.0.0.1:5000", Remote: "127.0.0.1:80", Holders: []collector.Holder{{PID: 7, Comm: "a"}},
			Action: &collector.Action{Op: "abort", Mechanism: "sock_diag", UID: 0, PID: 99, Done: true}},
			"12:00:01.123 ACTION abort 127.0.0.1:5000 -> 127.0.0.1:80 a/7 via sock_diag by uid 0 pid 99: done"},
		{collector.Change{Time: at, Type: "action", Local: "127.0.0.1:5000", Remote: "127.0.0.1:80",
			Action: &collector.Action{Op: "keepalive", UID: 1000, PID: 5, Error: "refused"}},
			"12:00:01.123 ACTION keepalive 127.0.0.1:5000 -> 127.0.0.1:80 by uid 1000 pid 5: not done: refused"},
	} {
		if got := changeLine(&c.ch, painter(false)); got != c.want {
			t.Errorf("changeLine = %q\nwant         %q", got, c.want)
		}
	}
}

// Several bad filter flags: the message is always about the first in a
// fixed order, and it is a usage error.
func TestFilterFlagsOrder(t *testing.T) {
	for i := 0; i < 20; i++ {
		fs := newFlags("ls", &bytes.Buffer{})
		ff := addFilterFlags(fs, true)
		if err := fs.Parse([]string{"--sort", "x", "--remote", "y", "--port", "0", "--verdict", "bogus"}); err != nil {
			t.Fatal(err)
		}
		_, err := ff.filter()
		var ue usageError
		if !errors.As(err, &ue) || !strings.HasPrefix(err.Error(), `unknown verdict "bogus"`) {
			t.Fatalf("filter() = %v, want the verdict's usage error", err)
		}
	}
	fs := newFlags("ls", &bytes.Buffer{})
	ff := addFilterFlags(fs, true)
	if err := fs.Parse([]string{"--state", "close-wait", "--port", "80", "--remote", "10.0.0.1", "--sort", "idle", "--closed"}); err != nil {
		t.Fatal(err)
	}
	f, err := ff.filter()
	if err != nil || f.State != collector.StateCloseWait || f.Port != 80 || f.Remote.String() != "10.0.0.1/32" || f.Sort != "idle" || !f.Closed {
		t.Errorf("filter() = %+v, %v", f, err)
	}
}

// TestWhoHoldersNotYetKnown: who says holders are not yet known, with the
// reason, when no walk has looked since the connection appeared, and says
// nobody holds the socket only when one has.
func TestWhoHoldersNotYetKnown(t *testing.T) {
	now := time.Now()
	v := collector.ConnView{State: collector.StateEstablished, FirstSeen: now, StateSince: now, Holders: []collector.Holder{},
		HoldersUnknownReason: "the connection (first seen at X) is newer than the last fd walk (at Y), and no connect or accept by a process was seen for it"}
	var b strings.Builder
	describe(&b, &v, now, false, painter(false))
	if want := "\nHolders\n  not yet known: the connection (first seen at X) is newer than the last fd walk (at Y)"; !strings.Contains(b.String(), want) {
		t.Errorf("who lacks %q:\n%s", want, b.String())
	}
	if strings.Contains(b.String(), "no process has an fd") {
		t.Errorf("who claims no process has an fd although no walk has looked:\n%s", b.String())
	}
	v.HoldersKnown, v.HoldersUnknownReason = true, ""
	b.Reset()
	describe(&b, &v, now, false, painter(false))
	if !strings.Contains(b.String(), "\nHolders\n  none: no process has an fd of this socket") {
		t.Errorf("who with known, empty holders:\n%s", b.String())
	}
}

// --older-than compares with the oldest verdict of the kind asked for, or
// without --verdict with the connection's age.
func TestOlderThanAge(t *testing.T) {
	now := time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)
	v := collector.ConnView{FirstSeen: now.Add(-time.Hour), Verdicts: []collector.Verdict{
		{Kind: "silent", Since: now.Add(-10 * time.Minute)}, {Kind: "ghost", Since: now.Add(-time.Minute)}}}
	for _, c := range []struct {
		verdict string
		d       time.Duration
		want    bool
	}{
		{"", 30 * time.Minute, true}, {"", 2 * time.Hour, false},
		{"silent", 5 * time.Minute, true}, {"silent", 20 * time.Minute, false},
		{"ghost", 5 * time.Minute, false}, {"close-wait", time.Second, false},
	} {
		if got := olderThanAge(&v, c.verdict, c.d, now); got != c.want {
			t.Errorf("olderThanAge(%q, %s) = %t, want %t", c.verdict, c.d, got, c.want)
		}
	}
}
