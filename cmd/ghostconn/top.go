package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	tea "charm.land/bubbletea/v2"
	"charm.land/lipgloss/v2"
	"github.com/charmbracelet/x/ansi"
	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/exporter"
)

// runTop is `ghostconn top`: a full-screen view of the agent's table that
// refreshes itself, for watching during an incident.
func runTop(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("top", stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, `usage: ghostconn top [flags]

A live view of the agent's connections: counts by state and verdict, the
agent's event rates and its own CPU and memory, and a table of the
connections that match, flagged ones first. Press ? in it for the keys.

flags:`)
		fs.PrintDefaults()
	}
	apiSocket := fs.String("api-socket", exporter.DefaultAPISocket, "the agent's API socket")
	ff := addFilterFlags(fs, false)
	sortKey := fs.String("sort", "", "order by "+strings.Join(exporter.SortKeys, ", ")+"; default flagged connections first, oldest verdict first")
	interval := fs.Duration("interval", time.Second, "how often to refresh")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *sortKey != "" {
		if _, err := exporter.ParseFilter(map[string][]string{"sort": {*sortKey}}); err != nil {
			return usageError{err.Error()}
		}
	}
	if *interval < 100*time.Millisecond {
		return usagef("--interval=%s: refresh at most ten times a second (100ms or more)", *interval)
	}
	f, err := ff.filter()
	if err != nil {
		return err
	}
	f.Sort = *sortKey
	out, isFile := stdout.(*os.File)
	if !isFile || !isTerminal(out) {
		return usagef("top needs a terminal, and stdout is not one: for a snapshot use 'ghostconn ls' (-o json for scripts), for a stream of changes 'ghostconn watch'")
	}
	if !isTerminal(os.Stdin) {
		return usagef("top reads its keys from a terminal, and stdin is not one: for a snapshot use 'ghostconn ls', for a stream of changes 'ghostconn watch'")
	}
	client := exporter.NewClient(*apiSocket)
	m := newTopModel(client, f, *interval, colorEnabled(out))
	// The first answer before the screen is taken: without an agent, say
	// so on a normal terminal.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	ans, err := client.Top(ctx, m.filter(), m.limit())
	cancel()
	if err != nil {
		if errors.Is(err, exporter.ErrNoAgent) {
			return fmt.Errorf("top needs a running agent, and none listens on %s ('ghostconn ls' takes a one-shot snapshot without one)", *apiSocket)
		}
		return agentError(*apiSocket, err)
	}
	m.setAnswer(ans, time.Now())
	p := tea.NewProgram(m, tea.WithOutput(out), tea.WithInput(os.Stdin))
	if _, err := p.Run(); err != nil {
		return fmt.Errorf("terminal: %w", err)
	}
	return nil
}

// isTerminal reports whether f answers the terminal ioctl.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// topMode is what the screen shows.
type topMode int

const (
	modeTable topMode = iota
	modeSearch
	modeDetail
	modeConfirm
	modeHelp
)

// topVerdicts is the cycle of the verdict filter key: every connection,
// then each verdict.
var topVerdicts = append([]string{""}, collector.VerdictKinds...)

// topSorts is the cycle of the sort key.
var topSorts = append([]string{""}, exporter.SortKeys...)

// topHeaderLines is how many lines come above the table's rows: three of
// counts and rates, a message line and the column names.
const topHeaderLines = 5

// topModel is the state of `ghostconn top` (a bubbletea model).
type topModel struct {
	client   *exporter.Client
	base     exporter.Filter // the flags'
	verdict  string          // the verdict filter, "" for all
	search   string
	input    string // the search being typed
	sort     string
	interval time.Duration
	width    int
	height   int
	st       topStyles

	ans      exporter.TopAnswer
	at       time.Time // when ans arrived
	readRate float64   // records read a second
	lostRate float64
	cpu      float64 // the agent's share of a core
	// restarted is set when the agent's counters went back since the last
	// answer: the rates start again.
	restarted bool
	err       error // the last refresh's
	inFlight  bool
	// seq numbers the requests; an answer to one older than the last
	// asked for (before a filter or sort changed) is dropped.
	seq uint64

	cursor int // index in ans.Rows
	offset int // first row on the screen
	// selected is the cookie under the cursor, kept across refreshes.
	selected uint64

	mode topMode
	// detailSeq numbers the who requests; only the last one's answer is
	// shown.
	detailSeq uint64
	detail    []string
	scroll    int
	confirm   *collector.ConnView
	msg       string
}

func newTopModel(c *exporter.Client, f exporter.Filter, interval time.Duration, color bool) *topModel {
	return &topModel{client: c, base: f, verdict: f.Verdict, sort: f.Sort, interval: interval,
		width: 80, height: 24, st: newTopStyles(color)}
}

// topStyles are the screen's styles; without colour (NO_COLOR, TERM=dumb)
// they leave text as it is, and only the row marker and the layout remain.
type topStyles struct {
	color                          bool
	title, header, selected, faint style
	red, yellow                    style
	painter                        painter
}

// style renders text in a style.
type style func(string) string

func newTopStyles(color bool) topStyles {
	mk := func(s lipgloss.Style) style {
		if !color {
			return func(t string) string { return t }
		}
		return func(t string) string { return s.Render(t) }
	}
	return topStyles{
		color:    color,
		title:    mk(lipgloss.NewStyle().Bold(true)),
		header:   mk(lipgloss.NewStyle().Reverse(true)),
		selected: mk(lipgloss.NewStyle().Reverse(true).Bold(true)),
		faint:    mk(lipgloss.NewStyle().Faint(true)),
		red:      mk(lipgloss.NewStyle().Foreground(lipgloss.Red)),
		yellow:   mk(lipgloss.NewStyle().Foreground(lipgloss.Yellow)),
		painter:  painter(color),
	}
}

// Messages of the model.
type (
	topTick   struct{}
	topAnswer struct {
		ans exporter.TopAnswer
		err error
		at  time.Time
		seq uint64
	}
	topDetail struct {
		v   *collector.ConnView
		err error
		seq uint64
	}
	topKilled struct {
		what    string
		results []collector.ActionResult
		err     error
	}
)

func (m *topModel) Init() tea.Cmd { return m.tick() }

func (m *topModel) tick() tea.Cmd {
	return tea.Tick(m.interval, func(time.Time) tea.Msg { return topTick{} })
}

// filter is the flags' filter with the keys' verdict, search and sort.
func (m *topModel) filter() exporter.Filter {
	f := m.base
	f.Verdict, f.Search, f.Sort = m.verdict, strings.ToLower(m.search), m.sort
	return f
}

// rowsShown is how many table rows fit on the screen.
func (m *topModel) rowsShown() int { return max(1, m.height-topHeaderLines-1) }

// limit is how many rows to ask for: down to the last one on the screen.
func (m *topModel) limit() int { return min(exporter.MaxTopLimit, m.offset+m.rowsShown()) }

// fetch asks the agent for the screen's rows.
func (m *topModel) fetch() tea.Cmd {
	if m.inFlight {
		return nil
	}
	m.inFlight = true
	m.seq++
	c, f, limit, seq := m.client, m.filter(), m.limit(), m.seq
	return func() tea.Msg {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ans, err := c.Top(ctx, f, limit)
		return topAnswer{ans: ans, err: err, at: time.Now(), seq: seq}
	}
}

// setAnswer takes a new answer: rates from the one before, and the cursor
// kept on the same connection where it is still listed.
func (m *topModel) setAnswer(ans exporter.TopAnswer, at time.Time) {
	m.restarted = false
	if !m.at.IsZero() && (ans.EventsRead < m.ans.EventsRead || ans.EventsLost < m.ans.EventsLost || ans.CPUSeconds < m.ans.CPUSeconds) {
		// Counters went back: another agent answers now.
		m.restarted, m.readRate, m.lostRate, m.cpu = true, 0, 0, 0
	} else if !m.at.IsZero() {
		if dt := ans.At.Sub(m.ans.At).Seconds(); dt > 0 {
			m.readRate = float64(ans.EventsRead-m.ans.EventsRead) / dt
			m.lostRate = float64(ans.EventsLost-m.ans.EventsLost) / dt
			m.cpu = (ans.CPUSeconds - m.ans.CPUSeconds) / dt
		}
	}
	m.ans, m.at = ans, at
	m.cursor = min(m.cursor, max(0, len(ans.Rows)-1))
	for i := range ans.Rows {
		if ans.Rows[i].Cookie == m.selected {
			m.cursor = i
			break
		}
	}
	m.follow()
}

// follow keeps the cursor on the screen and remembers its connection.
func (m *topModel) follow() {
	n := m.rowsShown()
	if m.cursor < m.offset {
		m.offset = m.cursor
	}
	if m.cursor >= m.offset+n {
		m.offset = m.cursor - n + 1
	}
	if m.cursor >= 0 && m.cursor < len(m.ans.Rows) {
		m.selected = m.ans.Rows[m.cursor].Cookie
	}
}

// lastRow is the last row the cursor may go to: the last that matches, or
// the last the API gives (MaxTopLimit).
func (m *topModel) lastRow() int { return min(m.ans.Matched, exporter.MaxTopLimit) - 1 }

func (m *topModel) current() *collector.ConnView {
	if m.cursor >= 0 && m.cursor < len(m.ans.Rows) {
		return &m.ans.Rows[m.cursor]
	}
	return nil
}

func (m *topModel) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
		m.follow()
		return m, m.fetch()
	case topTick:
		return m, tea.Batch(m.fetch(), m.tick())
	case topAnswer:
		if msg.seq != m.seq {
			return m, nil // asked before the filter, sort or scroll changed
		}
		m.inFlight = false
		m.err = msg.err
		if msg.err == nil {
			m.setAnswer(msg.ans, msg.at)
		}
		return m, nil
	case topDetail:
		if msg.seq != m.detailSeq || m.mode != modeDetail {
			return m, nil // for a row left since
		}
		if msg.err != nil {
			m.mode, m.msg = modeTable, "who: "+msg.err.Error()
			return m, nil
		}
		var b strings.Builder
		describe(&b, msg.v, time.Now(), false, m.st.painter)
		m.detail, m.scroll = strings.Split(strings.TrimRight(b.String(), "\n"), "\n"), 0
		return m, nil
	case topKilled:
		m.msg = killSummary(msg.what, msg.results, msg.err)
		return m, m.fetch()
	case tea.KeyPressMsg:
		return m.key(msg)
	case tea.PasteMsg:
		// An address pasted from an alert.
		if m.mode == modeSearch {
			m.typed(msg.Content)
		}
		return m, nil
	}
	return m, nil
}

// key handles a key press in the current mode.
func (m *topModel) key(k tea.KeyPressMsg) (tea.Model, tea.Cmd) {
	if k.String() == "ctrl+c" {
		return m, tea.Quit
	}
	switch m.mode {
	case modeHelp:
		m.mode = modeTable
		return m, nil
	case modeSearch:
		switch k.String() {
		case "enter":
			m.search, m.mode, m.cursor, m.offset = strings.TrimSpace(m.input), modeTable, 0, 0
			return m, m.refetch()
		case "esc":
			m.mode = modeTable
		case "backspace":
			if r := []rune(m.input); len(r) > 0 {
				m.input = string(r[:len(r)-1])
			}
		default:
			m.typed(k.Text)
		}
		return m, nil
	case modeDetail:
		switch k.String() {
		case "esc", "enter", "q", "left":
			m.mode, m.detail = modeTable, nil
		case "up":
			m.scroll = max(0, m.scroll-1)
		case "down":
			m.scroll = min(m.maxScroll(), m.scroll+1)
		case "pgup":
			m.scroll = max(0, m.scroll-(m.height-2))
		case "pgdown", "space":
			m.scroll = min(m.maxScroll(), m.scroll+m.height-2)
		}
		return m, nil
	case modeConfirm:
		v := m.confirm
		m.mode, m.confirm = modeTable, nil
		if k.String() != "y" && k.String() != "Y" {
			m.msg = "kill cancelled: nothing was done"
			return m, nil
		}
		m.msg = "killing " + v.Local + " -> " + v.Remote + " ..."
		c := m.client
		return m, func() tea.Msg {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			res, err := c.Kill(ctx, collector.KillRequest{Cookies: []uint64{v.Cookie}})
			return topKilled{what: v.Local + " -> " + v.Remote, results: res, err: err}
		}
	}
	m.msg = "" // a message stands until the next key
	switch k.String() {
	case "q":
		return m, tea.Quit
	case "?", "h":
		m.mode = modeHelp
	case "up":
		m.cursor = max(0, m.cursor-1)
		m.follow()
	case "down", "pgdown":
		step := 1
		if k.String() == "pgdown" {
			step = m.rowsShown()
		}
		m.cursor = max(0, min(m.lastRow(), m.cursor+step))
		m.follow()
		if m.cursor >= len(m.ans.Rows) {
			// Not fetched yet: ask down to it, and keep the cursor there
			// (not on the connection it left).
			m.selected = 0
			return m, m.refetch()
		}
	case "pgup":
		m.cursor = max(0, m.cursor-m.rowsShown())
		m.follow()
	case "home":
		m.cursor = 0
		m.follow()
	case "v":
		m.verdict = next(topVerdicts, m.verdict)
		m.cursor, m.offset = 0, 0
		return m, m.refetch()
	case "s":
		m.sort = next(topSorts, m.sort)
		m.cursor, m.offset = 0, 0
		return m, m.refetch()
	case "/":
		m.mode, m.input = modeSearch, m.search
	case "esc":
		m.search, m.verdict, m.msg = "", m.base.Verdict, ""
		return m, m.refetch()
	case "r":
		return m, m.refetch()
	case "enter":
		if v := m.current(); v != nil {
			m.mode, m.detail = modeDetail, []string{"asking the agent about " + v.Local + " -> " + v.Remote + " ..."}
			m.detailSeq++
			c, cookie, seq := m.client, v.Cookie, m.detailSeq
			return m, func() tea.Msg {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				t, err := exporter.ParseTarget(fmt.Sprint(cookie))
				if err != nil {
					return topDetail{err: err, seq: seq}
				}
				conns, err := c.Connections(ctx, exporter.Filter{Target: &t, History: true, Closed: true})
				for i := range conns {
					if conns[i].Cookie == cookie {
						return topDetail{v: &conns[i], seq: seq}
					}
				}
				if err == nil {
					err = errors.New("the connection is gone from the agent's table")
				}
				return topDetail{err: err, seq: seq}
			}
		}
	case "k":
		v := m.current()
		switch {
		case v == nil:
		case !collector.Killable(v.State, false):
			m.msg = fmt.Sprintf("%s sockets are not killed from top (LISTEN only with 'ghostconn kill --state LISTEN')", v.State)
		default:
			cp := *v
			m.mode, m.confirm = modeConfirm, &cp
		}
	}
	return m, nil
}

// typed adds text to the search being typed, up to the API's 128
// characters (bytes, as the API counts them).
func (m *topModel) typed(text string) {
	for _, r := range text {
		if r < ' ' || len(m.input)+utf8.RuneLen(r) > 128 {
			continue
		}
		m.input += string(r)
	}
}

// refetch asks again at once, after the filter, sort or scroll changed.
func (m *topModel) refetch() tea.Cmd {
	m.inFlight = false
	return m.fetch()
}

// next returns the element after cur in cycle, wrapping around.
func next(cycle []string, cur string) string {
	for i, s := range cycle {
		if s == cur {
			return cycle[(i+1)%len(cycle)]
		}
	}
	return cycle[0]
}

// killSummary says what a kill from top did, on one line.
func killSummary(what string, res []collector.ActionResult, err error) string {
	switch {
	case errors.Is(err, exporter.ErrAgentReadOnly):
		return "kill refused: the agent runs with --read-only; nothing was done"
	case err != nil:
		return "kill " + what + ": " + err.Error()
	case len(res) == 0:
		return "kill " + what + ": the agent did not answer for it"
	}
	r := res[0]
	switch {
	case r.Done:
		return fmt.Sprintf("killed %s through %s: now %s", what, orDash(r.Mechanism), orDash(r.After))
	case r.Gone:
		return "kill " + what + ": " + r.Error
	}
	return "kill " + what + " not done: " + r.Error
}

func (m *topModel) View() tea.View {
	v := tea.NewView(m.render())
	v.AltScreen = true
	return v
}

// render is the screen's text.
func (m *topModel) render() string {
	var lines []string
	switch m.mode {
	case modeHelp:
		lines = m.helpView()
	case modeDetail:
		lines = m.detailView()
	default:
		lines = m.tableView()
	}
	if len(lines) > m.height {
		lines = lines[:m.height]
	}
	for i, l := range lines {
		lines[i] = fit(l, m.width)
	}
	return strings.Join(lines, "\n")
}

// fit cuts a line that may carry escape codes to width columns, so that
// no line wraps.
func fit(s string, width int) string {
	if ansi.StringWidth(s) <= width {
		return s
	}
	return ansi.Truncate(s, width, "")
}

// clip cuts plain text to width columns with an ellipsis.
func clip(s string, width int) string {
	r := []rune(s)
	switch {
	case width <= 0:
		return ""
	case len(r) <= width:
		return s
	case width == 1:
		return "…"
	}
	return string(r[:width-1]) + "…"
}

func (m *topModel) headerLines() []string {
	a := &m.ans
	ready := "ready"
	if !a.Ready {
		ready = "NOT READY"
		if a.Reason != "" {
			ready += ": " + a.Reason
		}
	}
	states := make([]string, 0, len(a.ByState))
	for s := range a.ByState {
		states = append(states, s)
	}
	sort.Slice(states, func(i, j int) bool {
		return a.ByState[states[i]] > a.ByState[states[j]] || a.ByState[states[i]] == a.ByState[states[j]] && states[i] < states[j]
	})
	var sb strings.Builder
	fmt.Fprintf(&sb, "%d connections:", a.Total)
	for _, s := range states {
		name := s
		if st, err := collector.ParseState(s); err == nil && m.width < 100 && shortStates[st] != "" {
			name = shortStates[st]
		}
		fmt.Fprintf(&sb, " %s %d", name, a.ByState[s])
	}
	var vb strings.Builder
	fmt.Fprintf(&vb, "flagged %d:", a.Flagged)
	for _, k := range collector.VerdictKinds {
		fmt.Fprintf(&vb, " %s %d", m.verdictText(k), a.ByVerdict[k])
	}
	lost := fmt.Sprintf("lost %.0f/s", m.lostRate)
	if m.lostRate > 0 {
		lost = m.st.red(lost)
	}
	when := m.at.Format("15:04:05")
	if m.err != nil {
		when = m.st.red("STALE since " + when)
	}
	if !a.Ready {
		// The reason goes on the message line; the numbers stay here.
		ready = m.st.red("NOT READY")
	}
	rates := fmt.Sprintf("events %.0f/s %s", m.readRate, lost)
	if m.restarted {
		rates = "agent restarted: rates from the next refresh"
	}
	l1 := fmt.Sprintf("%s  %s  %s  %s  CPU %.1f%% RSS %s", m.st.title("ghostconn top"), ready, when,
		rates, m.cpu*100, bytesText(a.RSSBytes))
	return []string{l1, sb.String(), vb.String()}
}

func (m *topModel) verdictText(kind string) string {
	switch verdictColor(kind) {
	case ansiRed:
		return m.st.red(kind)
	case ansiYellow:
		return m.st.yellow(kind)
	}
	return kind
}

// bytesText prints a size in MiB or KiB.
func bytesText(n uint64) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d KiB", n>>10)
}

// topColumn is one column of the table: its title, whether it is
// right-aligned, the width it shrinks to first (soft: an IPv4 address and
// port, two verdicts) and at last (min), and in which order it shrinks to
// min (lower first: the process first, the state and verdicts last; the
// numbers, rank 9, not below 8 columns, which they never need).
type topColumn struct {
	title     string
	right     bool
	soft, min int
	shrink    int
}

var topColumns = []topColumn{
	{"STATE", false, 10, 5, 3}, {"LOCAL", false, 21, 9, 2}, {"REMOTE", false, 21, 9, 2}, {"PROCESS", false, 12, 7, 0},
	{"IDLE", true, 8, 8, 9}, {"RETR", true, 8, 8, 9}, {"VERDICTS", false, 12, 8, 3}, {"AGE", true, 8, 8, 9},
}

// shortStates are ss's short state names, for narrow screens.
var shortStates = map[collector.State]string{
	collector.StateEstablished: "ESTAB", collector.StateSynSent: "SYN-SENT", collector.StateSynRecv: "SYN-RECV",
	collector.StateFinWait1: "FIN-WAIT-1", collector.StateFinWait2: "FIN-WAIT-2", collector.StateTimeWait: "TIME-WAIT",
	collector.StateClose: "CLOSE", collector.StateCloseWait: "CLOSE-WAIT", collector.StateLastAck: "LAST-ACK",
	collector.StateListen: "LISTEN", collector.StateClosing: "CLOSING",
}

// topCells are a row's plain cells, in topColumns order; short uses ss's
// state names.
func topCells(v *collector.ConnView, now time.Time, short bool) []string {
	age := "-"
	if len(v.Verdicts) > 0 {
		oldest := v.Verdicts[0].Since
		for _, x := range v.Verdicts[1:] {
			if x.Since.Before(oldest) {
				oldest = x.Since
			}
		}
		age = ago(now, oldest)
	}
	kinds := make([]string, len(v.Verdicts))
	for i, x := range v.Verdicts {
		kinds[i] = x.Kind
	}
	verdicts := strings.Join(kinds, ",")
	if verdicts == "" {
		verdicts = "-"
	}
	state := v.State.String()
	if s, ok := shortStates[v.State]; ok && short {
		state = s
	}
	return []string{state, v.Local, v.Remote, processText(v), idleText(v), fmt.Sprint(v.Retransmits), verdicts, age}
}

// columnWidths fits the columns to width: each as wide as its widest
// cell, then the one furthest above its soft width shrunk first, then, in
// their shrink order (the process first, the state and the verdicts
// last), down to their minimums.
func columnWidths(rows [][]string, width int) []int {
	w := make([]int, len(topColumns))
	for i, c := range topColumns {
		w[i] = len(c.title)
	}
	for _, r := range rows {
		for i, s := range r {
			w[i] = max(w[i], len([]rune(s)))
		}
	}
	// The marker column and one space between columns.
	avail := width - 2 - (len(w) - 1)
	total := 0
	for _, x := range w {
		total += x
	}
	for total > avail {
		most := -1
		for i, c := range topColumns {
			if w[i] > c.soft && (most < 0 || w[i]-c.soft > w[most]-topColumns[most].soft) {
				most = i
			}
		}
		if most < 0 {
			break
		}
		w[most]--
		total--
	}
	for rank := 0; rank <= 3 && total > avail; rank++ {
		for total > avail {
			widest := -1
			for i, c := range topColumns {
				if c.shrink == rank && w[i] > c.min && (widest < 0 || w[i] > w[widest]) {
					widest = i
				}
			}
			if widest < 0 {
				break
			}
			w[widest]--
			total--
		}
	}
	return w // at the minimums, fit cuts the line
}

// dropPID shortens a PROCESS cell that does not fit: "nginx/1234 +2*"
// becomes "nginx +2*" (Enter shows the pids).
func dropPID(s string) string {
	name, rest, ok := strings.Cut(s, "/")
	if !ok {
		return s
	}
	if _, more, ok := strings.Cut(rest, " "); ok {
		return name + " " + more
	}
	return name
}

func pad(s string, w int, right bool) string {
	s = clip(s, w)
	gap := strings.Repeat(" ", w-len([]rune(s)))
	if right {
		return gap + s
	}
	return s + gap
}

func (m *topModel) tableView() []string {
	lines := m.headerLines()
	if m.mode == modeConfirm && m.confirm != nil {
		// Two lines: what it is, then what it is accused of.
		v := m.confirm
		lines[1] = m.st.red(fmt.Sprintf("kill %s -> %s? y aborts it, any other key cancels", v.Local, v.Remote))
		lines = append(lines, m.st.red(m.confirmText(v)))
	}
	switch {
	case m.mode == modeConfirm:
	case m.mode == modeSearch:
		lines = append(lines, "search (address, port, process, pid, pod; Enter applies, Esc cancels): "+m.input+"▏")
	case m.err != nil:
		lines = append(lines, m.st.red("refresh failed: "+m.err.Error()))
	case !m.ans.Ready && m.ans.Reason != "":
		lines = append(lines, m.st.red("not ready: "+m.ans.Reason))
	case m.msg != "":
		lines = append(lines, m.msg)
	default:
		lines = append(lines, m.filterText())
	}
	now := m.ans.At
	if now.IsZero() {
		now = time.Now()
	}
	rows := make([][]string, len(m.ans.Rows))
	for i := range m.ans.Rows {
		rows[i] = topCells(&m.ans.Rows[i], now, m.width < 100)
	}
	w := columnWidths(rows, m.width)
	titles := make([]string, len(w))
	for i, c := range topColumns {
		titles[i] = pad(c.title, w[i], c.right)
	}
	lines = append(lines, m.st.header(pad("  "+strings.Join(titles, " "), m.width, false)))
	end := min(len(rows), m.offset+m.rowsShown())
	for i := m.offset; i < end; i++ {
		cells := make([]string, len(w))
		for j, c := range topColumns {
			cell := rows[i][j]
			if j == 3 && len([]rune(cell)) > w[j] {
				cell = dropPID(cell)
			}
			cells[j] = pad(cell, w[j], c.right)
		}
		if i == m.cursor {
			lines = append(lines, m.st.selected(pad("> "+strings.Join(cells, " "), m.width, false)))
			continue
		}
		if v := &m.ans.Rows[i]; len(v.Verdicts) > 0 {
			// Colour the verdicts cell alone; its width stays the plain one.
			cells[6] = m.paintVerdicts(cells[6], v.Verdicts)
		}
		lines = append(lines, "  "+strings.Join(cells, " "))
	}
	if len(rows) == 0 {
		lines = append(lines, m.st.faint("  no connection matches"))
	}
	for len(lines) < m.height-1 {
		lines = append(lines, "")
	}
	of := fmt.Sprint(m.ans.Matched)
	if m.ans.Matched > exporter.MaxTopLimit {
		of += fmt.Sprintf(" (the first %d shown)", exporter.MaxTopLimit)
	}
	lines = append(lines, m.st.faint(fmt.Sprintf("%d-%d of %s  enter:who k:kill v:verdict /:search s:sort ?:help q:quit",
		min(m.offset+1, len(rows)), end, of)))
	return lines
}

// paintVerdicts colours the verdict names inside a padded cell.
func (m *topModel) paintVerdicts(cell string, vs []collector.Verdict) string {
	if !m.st.color {
		return cell
	}
	for _, v := range vs {
		if strings.Contains(cell, v.Kind) {
			cell = strings.Replace(cell, v.Kind, m.verdictText(v.Kind), 1)
		}
	}
	return cell
}

func (m *topModel) filterText() string {
	var parts []string
	if m.verdict != "" {
		parts = append(parts, "verdict="+m.verdict)
	}
	if m.search != "" {
		parts = append(parts, "search="+m.search)
	}
	f := m.base
	if f.State != 0 {
		parts = append(parts, "state="+f.State.String())
	}
	if f.PID != 0 {
		parts = append(parts, fmt.Sprintf("pid=%d", f.PID))
	}
	if f.Comm != "" {
		parts = append(parts, "comm="+f.Comm)
	}
	if f.Port != 0 {
		parts = append(parts, fmt.Sprintf("port=%d", f.Port))
	}
	if f.Remote.IsValid() {
		parts = append(parts, "remote="+f.Remote.String())
	}
	sortName := m.sort
	if sortName == "" {
		sortName = "flagged first"
	}
	filter := "all connections"
	if len(parts) > 0 {
		filter = strings.Join(parts, " ")
	}
	return fmt.Sprintf("showing %s, %d match; sort: %s", filter, m.ans.Matched, sortName)
}

func (m *topModel) confirmText(v *collector.ConnView) string {
	kinds := make([]string, len(v.Verdicts))
	for i, x := range v.Verdicts {
		kinds[i] = x.Kind
	}
	verdicts := "no verdict"
	if len(kinds) > 0 {
		verdicts = strings.Join(kinds, ", ")
	}
	return fmt.Sprintf("%s; %s; held by %s", verdicts, v.State, holdersList(v.Holders))
}

func (m *topModel) detailView() []string {
	lines := []string{m.st.header(pad("who: Esc or Enter goes back, ↑↓ PgUp PgDn scroll", m.width, false))}
	body := m.detailBody()
	start := min(m.scroll, max(0, len(body)-1))
	return append(lines, body[start:]...)
}

// detailBody is the who text wrapped to the screen (escape codes kept
// whole): wrapped, not cut, so that no evidence is lost at 80 columns.
func (m *topModel) detailBody() []string {
	body := make([]string, 0, len(m.detail))
	for _, l := range m.detail {
		body = append(body, strings.Split(ansi.Wrap(l, max(8, m.width), ""), "\n")...)
	}
	return body
}

// maxScroll is the last first line of the who view that still fills it.
func (m *topModel) maxScroll() int { return max(0, len(m.detailBody())-(m.height-1)) }

func (m *topModel) helpView() []string {
	return []string{
		m.st.title("ghostconn top: keys"),
		"",
		"  ↑ ↓ PgUp PgDn Home  move the cursor",
		"  Enter               everything about the connection (who): evidence, holders, closer, keepalive, history",
		"  k                   kill the connection (abort, as 'ghostconn kill'), after a confirmation",
		"  v                   filter by verdict: all, " + strings.Join(collector.VerdictKinds, ", "),
		"  /                   search by address, port, process name or pid, pod or container id",
		"  s                   sort: flagged first, " + strings.Join(exporter.SortKeys, ", "),
		"  Esc                 clear the search and the verdict filter",
		"  r                   refresh now",
		"  ?                   this help (any key leaves it)",
		"  q, Ctrl-C           quit",
		"",
		"Rows: flagged connections first (oldest verdict first), then the longest idle.",
		"PROCESS: the first holder, +N* when shared, ? when not known yet, - when none.",
		"AGE: how long the oldest verdict has stood.",
	}
}
