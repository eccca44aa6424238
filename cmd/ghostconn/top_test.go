package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"
	"github.com/charmbracelet/x/vt"
	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/exporter"
	"github.com/ghostconn/ghostconn/internal/testutil"
)

// TestTopRefusesWithoutTerminal: `ghostconn top | cat` exits 2 and points
// at ls and watch, before it asks any agent.
func TestTopRefusesWithoutTerminal(t *testing.T) {
	out, stderr, code := ghostconn(t, "top", "--api-socket", "/nonexistent/api.sock")
	if code != exitError || out != "" || !strings.Contains(stderr, "top needs a terminal, and stdout is not one") ||
		!strings.Contains(stderr, "ghostconn ls") || !strings.Contains(stderr, "ghostconn watch") {
		t.Errorf("top without a terminal: exit %d, stdout %q, stderr %q; want exit 2 and a message naming ls and watch", code, out, stderr)
	}
	if _, stderr, code := ghostconn(t, "top", "--interval", "1ms"); code != exitError || !strings.Contains(stderr, "--interval=1ms") {
		t.Errorf("top --interval 1ms: exit %d, %q; want a usage error", code, stderr)
	}
}

// topScene is an answer with long and short rows of every verdict.
func topScene(n int) exporter.TopAnswer {
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	idle := 93.0
	ans := exporter.TopAnswer{At: now, Ready: true, Top: collector.Top{Total: n, Matched: n, Flagged: 2,
		ByState:   map[string]int{"ESTABLISHED": n - 1, "CLOSE_WAIT": 1},
		ByVerdict: map[string]int{collector.VerdictGhost: 1, collector.VerdictCloseWait: 1}}}
	for i := range n {
		v := collector.ConnView{Cookie: uint64(i + 1), State: collector.StateEstablished,
			Local: fmt.Sprintf("10.0.%d.1:443", i), Remote: fmt.Sprintf("[2001:db8:aaaa:bbbb:cccc:dddd:eeee:%x]:%d", i, 40000+i),
			Holders:   []collector.Holder{{PID: 4000000 + uint32(i), Comm: "a-long-process", FD: 7}, {PID: 12, Comm: "sh", FD: 3}},
			FirstSeen: now.Add(-time.Hour), IdleSeconds: &idle, Retransmits: uint32(i)}
		switch i {
		case 0:
			v.Verdicts = []collector.Verdict{{Kind: collector.VerdictGhost, Since: now.Add(-3 * time.Minute)}, {Kind: collector.VerdictSilent, Since: now.Add(-time.Minute)}}
		case 1:
			v.State = collector.StateCloseWait
			v.Verdicts = []collector.Verdict{{Kind: collector.VerdictCloseWait, Since: now.Add(-10 * time.Second)}}
		}
		ans.Rows = append(ans.Rows, v)
	}
	return ans
}

// TestTopFitsTheScreen: at 120x40 and at 80x24, in colour and without, no
// line is wider than the screen (none wraps), the screen is not taller
// than the terminal, every row keeps its full local address and its
// verdicts, and without colour there is no escape code at all.
func TestTopFitsTheScreen(t *testing.T) {
	for _, color := range []bool{true, false} {
		for _, size := range [][2]int{{120, 40}, {80, 24}, {60, 15}} {
			m := newTopModel(nil, exporter.Filter{}, time.Second, color)
			m.Update(teaSize(size[0], size[1]))
			ans := topScene(50)
			m.setAnswer(ans, ans.At)
			for _, mode := range []topMode{modeTable, modeHelp, modeConfirm, modeDetail} {
				m.mode = mode
				m.confirm = &ans.Rows[0]
				m.detail = []string{strings.Repeat("evidence ", 40)}
				view := m.render()
				lines := strings.Split(view, "\n")
				name := fmt.Sprintf("%dx%d color=%t mode %d", size[0], size[1], color, mode)
				if len(lines) > size[1] {
					t.Errorf("%s: %d lines on a %d-line terminal", name, len(lines), size[1])
				}
				for i, l := range lines {
					if w := ansi.StringWidth(l); w > size[0] {
						t.Errorf("%s: line %d is %d columns wide: %q", name, i, w, l)
					}
				}
				if !color && strings.Contains(view, "\x1b[") {
					t.Errorf("%s: escape codes without colour:\n%q", name, view)
				}
				if mode != modeTable || size[0] < 80 {
					continue
				}
				rows := 0
				for _, l := range lines {
					if strings.Contains(l, ":443 ") {
						rows++
					}
				}
				if want := size[1] - topHeaderLines - 1; rows != want {
					t.Errorf("%s: %d rows with a full local address, want %d:\n%s", name, rows, want, view)
				}
				if !strings.Contains(view, "ghost,silent") || !strings.Contains(view, "close-wait") {
					t.Errorf("%s: verdicts missing:\n%s", name, view)
				}
			}
		}
	}
}

// TestTopOrdersFlaggedFirst: the agent's answer orders flagged connections
// first, the oldest verdict first; the cursor follows its connection when
// the rows move.
func TestTopOrdersFlaggedFirst(t *testing.T) {
	m := newTopModel(nil, exporter.Filter{}, time.Second, false)
	m.Update(teaSize(100, 30))
	ans := topScene(5)
	m.setAnswer(ans, ans.At)
	m.key(teaKey("down"))
	if m.selected != 2 {
		t.Fatalf("after down the cursor is on cookie %d, want 2", m.selected)
	}
	moved := topScene(5)
	moved.Rows[0], moved.Rows[1] = moved.Rows[1], moved.Rows[0]
	m.setAnswer(moved, moved.At.Add(time.Second))
	if m.cursor != 0 || m.selected != 2 {
		t.Errorf("after the rows moved the cursor is at %d on cookie %d, want 0 on cookie 2", m.cursor, m.selected)
	}
	for _, k := range []string{"v", "v"} {
		m.key(teaKey(k))
	}
	if m.filter().Verdict != collector.VerdictKinds[1] {
		t.Errorf("v twice: verdict filter %q, want %q", m.filter().Verdict, collector.VerdictKinds[1])
	}
	m.key(teaKey("esc"))
	if m.filter().Verdict != "" {
		t.Errorf("esc left the verdict filter %q", m.filter().Verdict)
	}
}

// ptyTerm is a program running on a pseudo-terminal, with a terminal
// emulator (charmbracelet/x/vt) reading its screen, wrapped lines included.
type ptyTerm struct {
	t      *testing.T
	master *os.File
	cmd    *exec.Cmd
	mu     sync.Mutex
	emu    *vt.Emulator
	raw    bytes.Buffer
	done   chan error
	// readDone is closed when all the program wrote has been read.
	readDone chan struct{}
}

func startOnPty(t *testing.T, cols, rows int, env []string, args ...string) *ptyTerm {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(rows), Col: uint16(cols)}); err != nil {
		t.Fatal(err)
	}
	slave, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := &ptyTerm{t: t, master: master, emu: vt.NewEmulator(cols, rows), done: make(chan error, 1), readDone: make(chan struct{})}
	p.cmd = exec.Command(binary, args...)
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "NO_COLOR=") && !strings.HasPrefix(e, "TERM=") {
			p.cmd.Env = append(p.cmd.Env, e)
		}
	}
	p.cmd.Env = append(append(p.cmd.Env, "TERM=xterm-256color"), env...)
	p.cmd.Stdin, p.cmd.Stdout, p.cmd.Stderr = slave, slave, slave
	// Its own session with the pty as the controlling terminal, so that a
	// resize sends it SIGWINCH.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	go func() {
		defer close(p.readDone)
		b := make([]byte, 32<<10)
		for {
			n, err := master.Read(b)
			if n > 0 {
				p.mu.Lock()
				p.raw.Write(b[:n])
				p.emu.Write(b[:n])
				p.mu.Unlock()
			}
			if err != nil {
				return // EIO once the program and its terminal are gone
			}
		}
	}()
	// What the emulated terminal answers to queries (colours, modes).
	go func() { _, _ = io.Copy(master, p.emu) }()
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
		}
		master.Close()
		p.emu.Close()
	})
	return p
}

// screen is the emulated terminal's text.
func (p *ptyTerm) screen() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.emu.String()
}

func (p *ptyTerm) send(keys string) {
	p.t.Helper()
	if _, err := p.master.WriteString(keys); err != nil {
		p.t.Fatal(err)
	}
}

func (p *ptyTerm) resize(cols, rows int) {
	p.t.Helper()
	p.mu.Lock()
	p.emu.Resize(cols, rows)
	p.mu.Unlock()
	if err := unix.IoctlSetWinsize(int(p.master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(rows), Col: uint16(cols)}); err != nil {
		p.t.Fatal(err)
	}
}

// waitScreen waits until cond holds for the screen and returns it.
func (p *ptyTerm) waitScreen(d time.Duration, what string, cond func(s string) bool) string {
	p.t.Helper()
	var s string
	testutil.Eventually(p.t, d, what, func() (bool, string) {
		s = p.screen()
		return cond(s), "screen:\n" + s
	})
	return s
}

// isRow reports whether a screen line is a table row: the marker column,
// then a state.
func isRow(l string) bool {
	if !strings.HasPrefix(l, "  ") && !strings.HasPrefix(l, "> ") {
		return false
	}
	f := strings.Fields(l[2:])
	if len(f) == 0 {
		return false
	}
	for st, short := range shortStates {
		if f[0] == short || f[0] == st.String() {
			return true
		}
	}
	return false
}

// rowLine returns the screen line that lists the connection local -> remote.
func rowLine(screen, local, remote string) string {
	for _, l := range strings.Split(screen, "\n") {
		if strings.Contains(l, " "+local+" ") && strings.Contains(l, " "+remote+" ") {
			return l
		}
	}
	return ""
}

// TestTopLive drives the real `ghostconn top` on a pseudo-terminal against
// a running agent with a real ghost and a real close-wait connection.
func TestTopLive(t *testing.T) {
	a, _ := cliAgent(t)
	l := newCLIListener(t)
	// The ghost: closed by the application, kept by a dup.
	c, _ := l.dial(nil)
	ghostLocal, ghostRemote := c.LocalAddr().String(), c.RemoteAddr().String()
	ghostCloser := cliFD(t, c)
	f, err := c.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c.Close()
	// The close-wait: the peer closed, the server never does.
	c, srv := l.dial(nil)
	cwLocal, cwRemote := srv.LocalAddr().String(), srv.RemoteAddr().String()
	c.Close()

	term := startOnPty(t, 120, 40, nil, "top", "--api-socket", a.sock, "--port", l.port())

	// Each row appears, with its verdict, within 2 s of the agent flagging
	// it (top refreshes every second).
	client := exporter.NewClient(a.sock)
	flagged := map[string]time.Time{}
	shown := map[string]time.Time{}
	want := map[string]string{ghostLocal + " " + ghostRemote: collector.VerdictGhost, cwLocal + " " + cwRemote: collector.VerdictCloseWait}
	testutil.Eventually(t, 60*time.Second, "the ghost and the close-wait flagged by the agent and shown by top", func() (bool, string) {
		conns, err := client.Connections(context.Background(), exporter.Filter{})
		if err != nil {
			return false, err.Error()
		}
		now := time.Now()
		for i := range conns {
			k := conns[i].Local + " " + conns[i].Remote
			if kind, ok := want[k]; ok && hasVerdict(&conns[i], kind) != nil && flagged[k].IsZero() {
				flagged[k] = now
			}
		}
		s := term.screen()
		for k, kind := range want {
			lr := strings.SplitN(k, " ", 2)
			if line := rowLine(s, lr[0], lr[1]); strings.Contains(line, kind) && shown[k].IsZero() {
				shown[k] = now
			}
		}
		return len(shown) == 2 && len(flagged) == 2, fmt.Sprintf("flagged %v, shown %v; screen:\n%s", flagged, shown, s)
	})
	for k := range want {
		// Flagging is seen by polling the API, so a row may show first.
		if lag := shown[k].Sub(flagged[k]); lag > 2*time.Second {
			t.Errorf("%s shown %s after the agent flagged it, want within 2s", k, lag)
		}
	}
	s := term.screen()
	if !strings.Contains(s, "flagged") || !strings.Contains(s, "ready") || !strings.Contains(s, "events") || !strings.Contains(s, "RSS") {
		t.Errorf("header lacks the counts, readiness, rates or the agent's memory:\n%s", s)
	}

	// v: the verdict filter (ghost first) hides the close-wait.
	term.send("v")
	s = term.waitScreen(5*time.Second, "the verdict filter to show the ghost alone", func(s string) bool {
		return strings.Contains(s, "verdict=ghost") && rowLine(s, ghostLocal, ghostRemote) != "" && rowLine(s, cwLocal, cwRemote) == ""
	})

	// Enter: the who view, with the closer and the holder's fd.
	term.send("\r")
	s = term.waitScreen(5*time.Second, "the who view of the ghost", func(s string) bool {
		return strings.Contains(s, "Closed by") && strings.Contains(s, "Holders")
	})
	for _, w := range []string{fmt.Sprintf("closed fd %d", ghostCloser), fmt.Sprintf("fd %d", int(f.Fd())), ghostLocal} {
		if !strings.Contains(s, w) {
			t.Errorf("who view lacks %q:\n%s", w, s)
		}
	}
	term.send("\x1b")
	term.waitScreen(5*time.Second, "the table again", func(s string) bool { return strings.Contains(s, "VERDICTS") })

	// 120x40 to 80x24: the rows stay one line each, the full addresses in.
	term.send("\x1b") // clears the filter: both rows again
	term.resize(80, 24)
	s = term.waitScreen(5*time.Second, "both rows at 80x24", func(s string) bool {
		return rowLine(s, ghostLocal, ghostRemote) != "" && rowLine(s, cwLocal, cwRemote) != "" && strings.Contains(s, "ESTAB ")
	})
	lines := strings.Split(s, "\n")
	if len(lines) > 24 {
		t.Errorf("%d lines on a 24-line terminal:\n%s", len(lines), s)
	}
	for i, l := range lines {
		if w := ansi.StringWidth(l); w > 80 {
			t.Errorf("line %d is %d columns at 80x24: %q", i, w, l)
		}
		// A wrapped row would leave a line that does not start with a
		// marker and a state.
		if i > topHeaderLines-1 && i < len(lines)-1 && l != "" && !isRow(l) {
			t.Errorf("line %d at 80x24 is not a row: %q", i, l)
		}
	}

	// k on the row under the cursor: a confirmation with its verdict,
	// then y kills it through the agent.
	var selLocal, selRemote, selKind string
	for k, kind := range want {
		lr := strings.SplitN(k, " ", 2)
		if strings.HasPrefix(rowLine(s, lr[0], lr[1]), "> ") {
			selLocal, selRemote, selKind = lr[0], lr[1], kind
		}
	}
	if selLocal == "" {
		t.Fatalf("the cursor is on neither the ghost nor the close-wait:\n%s", s)
	}
	term.send("k")
	term.waitScreen(5*time.Second, "the kill confirmation", func(s string) bool {
		return strings.Contains(s, "kill "+selLocal+" -> "+selRemote+"?") && strings.Contains(s, selKind+";")
	})
	term.send("y")
	term.waitScreen(10*time.Second, "the kill's result", func(s string) bool { return strings.Contains(s, "killed "+selLocal) })
	testutil.Eventually(t, 10*time.Second, "the killed connection gone from the agent", func() (bool, string) {
		conns, err := client.Connections(context.Background(), exporter.Filter{})
		for i := range conns {
			if conns[i].Local == selLocal && conns[i].Remote == selRemote {
				return false, fmt.Sprintf("still there: %+v", conns[i])
			}
		}
		return err == nil, fmt.Sprint(err)
	})

	// q leaves with exit 0 and gives the terminal back: the alternate
	// screen left and the cursor shown.
	term.send("q")
	select {
	case err := <-term.done:
		if err != nil {
			t.Errorf("top after q: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("top still running 10s after q")
	}
	select {
	case <-term.readDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the terminal still open 10s after top exited")
	}
	term.mu.Lock()
	raw := term.raw.String()
	term.mu.Unlock()
	if i, j := strings.LastIndex(raw, "\x1b[?1049l"), strings.LastIndex(raw, "\x1b[?25h"); i < 0 || j < 0 || i < strings.LastIndex(raw, "\x1b[?1049h") {
		t.Errorf("terminal not restored after q (alternate screen left at %d, cursor shown at %d); output ends %q", i, j, raw[max(0, len(raw)-200):])
	}
}

func teaSize(w, h int) tea.WindowSizeMsg { return tea.WindowSizeMsg{Width: w, Height: h} }

// teaKey is the key message bubbletea makes of a key's name.
func teaKey(k string) tea.KeyPressMsg {
	switch k {
	case "down":
		return tea.KeyPressMsg{Code: tea.KeyDown}
	case "up":
		return tea.KeyPressMsg{Code: tea.KeyUp}
	case "esc":
		return tea.KeyPressMsg{Code: tea.KeyEscape}
	case "enter":
		return tea.KeyPressMsg{Code: tea.KeyEnter}
	}
	return tea.KeyPressMsg{Code: []rune(k)[0], Text: k}
}

// TestTopEmptyAndStale: keys on an empty table do nothing harmful, and an
// answer to a request made before the filter changed is dropped.
func TestTopEmptyAndStale(t *testing.T) {
	m := newTopModel(nil, exporter.Filter{}, time.Second, false)
	m.Update(teaSize(80, 24))
	empty := exporter.TopAnswer{Ready: true}
	m.setAnswer(empty, time.Now())
	for _, k := range []string{"pgdown", "down", "up", "home", "pgup", "enter", "k"} {
		msg := teaKey(k)
		switch k {
		case "pgdown":
			msg = tea.KeyPressMsg{Code: tea.KeyPgDown}
		case "pgup":
			msg = tea.KeyPressMsg{Code: tea.KeyPgUp}
		case "home":
			msg = tea.KeyPressMsg{Code: tea.KeyHome}
		}
		m.Update(msg)
		if m.cursor < 0 || m.offset < 0 || m.mode != modeTable {
			t.Fatalf("after %s on an empty table: cursor %d, offset %d, mode %d", k, m.cursor, m.offset, m.mode)
		}
	}
	if v := m.render(); !strings.Contains(v, "no connection matches") {
		t.Errorf("empty table:\n%s", v)
	}
	old := m.seq
	m.key(teaKey("v")) // a new filter: a new request
	m.Update(topAnswer{ans: topScene(3), at: time.Now(), seq: old})
	if len(m.ans.Rows) != 0 {
		t.Errorf("an answer to the request before the filter changed was taken")
	}
	m.Update(topAnswer{ans: topScene(3), at: time.Now(), seq: m.seq})
	if len(m.ans.Rows) != 3 {
		t.Errorf("the answer to the last request was dropped")
	}
}

// TestTopScrollsPastTheFetchedRows: Down and PgDn past the rows fetched
// ask for more and keep the cursor where it went; the who view scrolls to
// its last wrapped line; counters that go back (a new agent) reset the
// rates instead of wrapping around.
func TestTopScrollsPastTheFetchedRows(t *testing.T) {
	m := newTopModel(nil, exporter.Filter{}, time.Second, false)
	m.Update(teaSize(80, 24))
	all := topScene(100)
	answer := func(n int) exporter.TopAnswer {
		a := all
		a.Rows = all.Rows[:n]
		return a
	}
	m.setAnswer(answer(m.limit()), all.At)
	shown := m.rowsShown()
	m.Update(tea.KeyPressMsg{Code: tea.KeyPgDown})
	if m.cursor != shown || m.limit() <= shown {
		t.Fatalf("PgDn: cursor %d, asking for %d rows; want cursor %d and more rows", m.cursor, m.limit(), shown)
	}
	m.Update(topAnswer{ans: answer(m.limit()), at: all.At, seq: m.seq})
	if m.cursor != shown || m.selected != all.Rows[shown].Cookie {
		t.Errorf("after the answer: cursor %d on cookie %d, want %d on %d", m.cursor, m.selected, shown, all.Rows[shown].Cookie)
	}
	for i := 1; i <= 3; i++ {
		m.Update(teaKey("down"))
		m.Update(topAnswer{ans: answer(m.limit()), at: all.At, seq: m.seq})
		if m.cursor != shown+i {
			t.Fatalf("down %d: cursor %d, want %d", i, m.cursor, shown+i)
		}
	}
	if v := m.render(); !strings.Contains(v, "> ") || !strings.Contains(v, all.Rows[m.cursor].Local+" ") {
		t.Errorf("the cursor's row is not on the screen:\n%s", v)
	}

	long := make([]string, 30)
	for i := range long {
		long[i] = fmt.Sprintf("line %d: %s", i, strings.Repeat("evidence ", 15))
	}
	m.mode, m.detail = modeDetail, long
	for range 200 {
		m.Update(teaKey("down"))
	}
	if v := m.render(); !strings.Contains(v, "line 29:") {
		t.Errorf("the who view does not reach its last line:\n%s", v)
	}

	m.mode = modeTable
	restarted := all
	restarted.EventsRead, restarted.CPUSeconds = 0, 0
	prev := all
	prev.EventsRead, prev.CPUSeconds = 1000, 50
	m.setAnswer(prev, all.At)
	restarted.At = all.At.Add(time.Second)
	m.setAnswer(restarted, restarted.At)
	if !m.restarted || m.readRate != 0 || m.cpu != 0 || !strings.Contains(m.render(), "agent restarted") {
		t.Errorf("counters going back: restarted %t, rate %f, cpu %f", m.restarted, m.readRate, m.cpu)
	}
}
