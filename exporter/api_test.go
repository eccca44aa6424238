package exporter_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/exporter"
)

// tableSource is an exporter.Source over a bare table, without the kernel.
type tableSource struct{ tb *collector.Table }

func (s tableSource) Table() *collector.Table { return s.tb }

func (s tableSource) Status() (collector.Status, error) { return collector.Status{Ready: true}, nil }

func apiStateEv(cookie uint64, at time.Time, from, to collector.State, local, remote string, task *collector.Task) collector.Event {
	return collector.Event{
		Kind: collector.KindState, Time: at, Cookie: cookie, Netns: 4026531840, Family: collector.FamilyIPv4,
		Local: netip.MustParseAddrPort(local), Remote: netip.MustParseAddrPort(remote),
		OldState: from, State: to, Task: task,
	}
}

// apiTable holds three connections, fed as domain events:
//
//	1  10.0.0.1:40000 -> 10.0.0.2:443       ESTABLISHED, opened by curl/42
//	2  10.0.0.1:40001 -> 192.168.1.9:5432   ESTABLISHED, opened by psql/77, unresponsive
//	3  10.0.0.1:8080  -> 10.0.0.3:50000     CLOSE_WAIT
func apiTable(t *testing.T) *collector.Table {
	t.Helper()
	tb := collector.NewTable(collector.TableConfig{MaxConns: 100, HistoryTTL: time.Hour, MaxHistory: 100, Verdicts: collector.DefaultVerdictConfig})
	at := time.Now().Add(-time.Minute)
	curl := &collector.Task{PID: 42, PPID: 1, Comm: "curl"}
	psql := &collector.Task{PID: 77, PPID: 1, Comm: "psql"}
	retrans := collector.Event{
		Kind: collector.KindRetransmit, Time: at.Add(2 * time.Second), Cookie: 2, Netns: 4026531840, Family: collector.FamilyIPv4,
		Local: netip.MustParseAddrPort("10.0.0.1:40001"), Remote: netip.MustParseAddrPort("192.168.1.9:5432"),
		State:    collector.StateEstablished,
		Counters: collector.TCPCounters{Retransmits: 5, TotalRetrans: 5, RTO: 6400 * time.Millisecond, HaveCounters: true},
	}
	tb.Apply([]collector.Event{
		apiStateEv(1, at, collector.StateClose, collector.StateSynSent, "10.0.0.1:0", "10.0.0.2:443", curl),
		apiStateEv(1, at, collector.StateSynSent, collector.StateEstablished, "10.0.0.1:40000", "10.0.0.2:443", nil),
		apiStateEv(2, at, collector.StateClose, collector.StateSynSent, "10.0.0.1:0", "192.168.1.9:5432", psql),
		apiStateEv(2, at, collector.StateSynSent, collector.StateEstablished, "10.0.0.1:40001", "192.168.1.9:5432", nil),
		retrans,
		apiStateEv(3, at, collector.StateSynRecv, collector.StateEstablished, "10.0.0.1:8080", "10.0.0.3:50000", nil),
		apiStateEv(3, time.Now(), collector.StateEstablished, collector.StateCloseWait, "10.0.0.1:8080", "10.0.0.3:50000", nil),
	})
	tb.Evaluate(time.Now())
	return tb
}

// get serves one request and returns the answer.
func get(t *testing.T, h http.Handler, target string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	return rec
}

func cookies(t *testing.T, rec *httptest.ResponseRecorder) []uint64 {
	t.Helper()
	var conns []collector.ConnView
	if err := json.Unmarshal(rec.Body.Bytes(), &conns); err != nil {
		t.Fatalf("body is not a JSON array of connections: %v\n%s", err, rec.Body)
	}
	out := []uint64{}
	for _, c := range conns {
		out = append(out, c.Cookie)
	}
	return out
}

func TestAPIListsWithFilters(t *testing.T) {
	api := exporter.NewAPI(tableSource{apiTable(t)})
	for _, tc := range []struct {
		query string
		want  []uint64
	}{
		{"", []uint64{1, 2, 3}},
		{"verdict=unresponsive", []uint64{2}},
		{"verdict=ghost", []uint64{}},
		{"state=ESTABLISHED", []uint64{1, 2}},
		{"state=close-wait", []uint64{3}},
		{"port=443", []uint64{1}},
		{"port=8080", []uint64{3}},
		{"pid=42", []uint64{1}},
		{"comm=psql", []uint64{2}},
		{"remote=192.168.0.0/16", []uint64{2}},
		{"remote=10.0.0.3", []uint64{3}},
		{"state=ESTABLISHED&port=5432", []uint64{2}},
		{"state=CLOSE_WAIT&pid=42", []uint64{}},
		{"target=10.0.0.2:443", []uint64{1}},
		{"target=3", []uint64{3}},
		{"sort=retransmits", []uint64{2, 1, 3}},
	} {
		rec := get(t, api, "/v1/connections?"+tc.query)
		if rec.Code != http.StatusOK {
			t.Errorf("?%s: %d %s", tc.query, rec.Code, rec.Body)
			continue
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("?%s: Content-Type %q", tc.query, ct)
		}
		got := cookies(t, rec)
		if !slices.Equal(got, tc.want) {
			t.Errorf("?%s: cookies %v, want %v", tc.query, got, tc.want)
		}
		if n := rec.Header().Get(exporter.CountHeader); n != strconv.Itoa(len(tc.want)) {
			t.Errorf("?%s: %s %q, want %d", tc.query, exporter.CountHeader, n, len(tc.want))
		}
	}
}

func TestAPIRejectsBadFilters(t *testing.T) {
	api := exporter.NewAPI(tableSource{apiTable(t)})
	for _, tc := range []struct {
		query, want string
	}{
		{"verdict=bogus", `unknown verdict "bogus"`},
		{"state=FLYING", `unknown tcp state "FLYING"`},
		{"pid=0", `pid "0" is not a process id`},
		{"pid=-3", `pid "-3"`},
		{"comm=0123456789abcdefg", `comm "0123456789abcdefg"`},
		{"port=70000", `port "70000" is not a port number`},
		{"port=0", `port "0"`},
		// The remote message names the bad value, not the parameter.
		{"remote=nope", `remote "nope" is not a CIDR prefix or an IP address`},
		{"target=nope", `target "nope"`},
		{"sort=size", `unknown sort "size"`},
		{"closed=maybe", `parameter closed="maybe" is not a boolean`},
		{"history=2", `parameter history="2"`},
		{"port=80&port=443", "parameter port given 2 times"},
		{"nosuch=1", `unknown parameter "nosuch"`},
	} {
		for _, path := range []string{"/v1/connections", "/v1/watch"} {
			rec := get(t, api, path+"?"+tc.query)
			if rec.Code != http.StatusBadRequest {
				t.Errorf("%s?%s: %d, want 400", path, tc.query, rec.Code)
				continue
			}
			var e exporter.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
				t.Errorf("%s?%s: body is not a JSON error: %v\n%s", path, tc.query, err, rec.Body)
				continue
			}
			if !strings.Contains(e.Error, tc.want) {
				t.Errorf("%s?%s: error %q, want it to contain %q", path, tc.query, e.Error, tc.want)
			}
		}
	}
	// Parameters that only listing takes are refused by watch.
	for _, q := range []string{"sort=idle", "closed=true", "history=true", "target=10.0.0.2:443"} {
		rec := get(t, api, "/v1/watch?"+q)
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "watch takes only") {
			t.Errorf("/v1/watch?%s: %d %s, want 400 naming what watch takes", q, rec.Code, rec.Body)
		}
	}
}

// `who` asks for one target. An unknown one is an empty answer, not an
// error (the CLI says it found nothing); only an unknown endpoint is 404.
func TestAPIWhoUnknownTarget(t *testing.T) {
	api := exporter.NewAPI(tableSource{apiTable(t)})
	for _, target := range []string{"10.9.9.9:1", "99999", "socket:[12345]"} {
		rec := get(t, api, "/v1/connections?closed=true&history=true&target="+target)
		if rec.Code != http.StatusOK {
			t.Errorf("target %s: %d %s", target, rec.Code, rec.Body)
			continue
		}
		if got := cookies(t, rec); len(got) != 0 {
			t.Errorf("target %s: cookies %v, want none", target, got)
		}
		if strings.TrimSpace(rec.Body.String()) != "[]" || rec.Header().Get(exporter.CountHeader) != "0" {
			t.Errorf("target %s: body %q count %q, want [] and 0", target, rec.Body, rec.Header().Get(exporter.CountHeader))
		}
	}
	rec := get(t, api, "/v1/connections?closed=true&history=true&target=10.0.0.2:443")
	var conns []collector.ConnView
	if err := json.Unmarshal(rec.Body.Bytes(), &conns); err != nil || len(conns) != 1 {
		t.Fatalf("known target: %v %s", err, rec.Body)
	}
	if c := conns[0]; c.Opener == nil || c.Opener.Comm != "curl" || len(c.History) != 2 {
		t.Errorf("known target: opener %+v, %d transitions; want curl and 2 with history=true", c.Opener, len(c.History))
	}
	for _, path := range []string{"/v1/who", "/v2/connections", "/"} {
		rec := get(t, api, path)
		var e exporter.Error
		if rec.Code != http.StatusNotFound || json.Unmarshal(rec.Body.Bytes(), &e) != nil || !strings.Contains(e.Error, "no such endpoint GET "+path) {
			t.Errorf("%s: %d %s, want 404 with a JSON error naming the path", path, rec.Code, rec.Body)
		}
	}
}

// The watch stream is newline-delimited JSON: one Change object a line,
// only the changes that pass the filter, flushed as they happen.
func TestAPIWatchStream(t *testing.T) {
	tb := apiTable(t)
	srv := httptest.NewServer(exporter.NewAPI(tableSource{tb}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/v1/watch?port=443", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("watch: %s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Errorf("watch Content-Type %q, want application/x-ndjson", ct)
	}
	// The headers arrive after the subscription is made, so these changes
	// are all seen.
	now := time.Now()
	tb.Apply([]collector.Event{
		apiStateEv(2, now, collector.StateEstablished, collector.StateFinWait1, "10.0.0.1:40001", "192.168.1.9:5432", nil),
		apiStateEv(1, now, collector.StateEstablished, collector.StateFinWait1, "10.0.0.1:40000", "10.0.0.2:443", nil),
		apiStateEv(1, now.Add(time.Millisecond), collector.StateFinWait1, collector.StateFinWait2, "10.0.0.1:40000", "10.0.0.2:443", nil),
	})
	sc := bufio.NewScanner(resp.Body)
	var got []collector.Change
	for len(got) < 2 && sc.Scan() {
		line := sc.Bytes()
		dec := json.NewDecoder(strings.NewReader(string(line)))
		var ch collector.Change
		if err := dec.Decode(&ch); err != nil || dec.More() {
			t.Fatalf("watch line is not one JSON object (%v): %q", err, line)
		}
		got = append(got, ch)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading the stream: %v (got %+v)", err, got)
	}
	if len(got) != 2 {
		t.Fatalf("got %d changes before the stream ended, want 2: %+v", len(got), got)
	}
	for i, want := range []collector.State{collector.StateFinWait1, collector.StateFinWait2} {
		ch := got[i]
		if ch.Type != "state" || ch.Cookie != 1 || ch.State != want || ch.Local != "10.0.0.1:40000" || ch.Remote != "10.0.0.2:443" {
			t.Errorf("change %d = %+v, want cookie 1's state change to %s (port 443 only)", i, ch, want)
		}
	}
}

// TestClientConnectionsRawCount reads /v1/connections through the CLI's
// client over a unix socket, as `ghostconn ls -o json` does: the streamed
// answer (default order, live connections) carries its count in a
// trailer, a sorted one in a header, and both bodies are WriteConnViews
// of Table.List byte for byte.
func TestClientConnectionsRawCount(t *testing.T) {
	tb := apiTable(t)
	sock := t.TempDir() + "/api.sock"
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	api := exporter.NewAPI(tableSource{tb})
	api.SetClock(func() time.Time { return now })
	srv := &http.Server{Handler: api}
	go srv.Serve(ln)
	defer srv.Close()
	client := exporter.NewClient(sock)
	for _, tc := range []struct {
		query string
		opts  collector.ListOptions
		sort  string
	}{
		{"", collector.ListOptions{}, ""},
		{"state=ESTABLISHED", collector.ListOptions{}, ""},
		{"sort=retransmits", collector.ListOptions{}, "retransmits"},
		{"closed=1", collector.ListOptions{Closed: true}, ""},
	} {
		q, err := url.ParseQuery(tc.query)
		if err != nil {
			t.Fatal(err)
		}
		f, err := exporter.ParseFilter(q)
		if err != nil {
			t.Fatal(err)
		}
		tc.opts.Match = f.Match
		want := tb.List(now, tc.opts)
		exporter.Sort(want, tc.sort)
		var wantBody bytes.Buffer
		if err := exporter.WriteConnViews(&wantBody, want); err != nil {
			t.Fatal(err)
		}
		var body bytes.Buffer
		n, err := client.ConnectionsRaw(context.Background(), f, &body)
		if err != nil {
			t.Fatalf("?%s: %v", tc.query, err)
		}
		if n != len(want) || body.String() != wantBody.String() {
			t.Errorf("?%s: count %d and body\n%s\nwant %d and\n%s", tc.query, n, body.String(), len(want), wantBody.String())
		}
	}
}
