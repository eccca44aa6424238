package collector_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/ghostconn/ghostconn/collector"
)

func TestParseState(t *testing.T) {
	tests := []struct {
		in   string
		want collector.State
	}{
		{"close-wait", collector.StateCloseWait},
		{"CLOSE_WAIT", collector.StateCloseWait},
		{"ESTABLISHED", collector.StateEstablished},
		{"established", collector.StateEstablished},
		{"Syn-Sent", collector.StateSynSent},
		{"time_wait", collector.StateTimeWait},
		{"fin-wait1", collector.StateFinWait1},
		{"new-syn-recv", collector.StateNewSynRecv},
		{"listen", collector.StateListen},
	}
	for _, tc := range tests {
		got, err := collector.ParseState(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseState(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestParseStateRejects(t *testing.T) {
	for _, in := range []string{"bogus", "", "STATE(1)", "1", " ESTABLISHED", "closewait"} {
		got, err := collector.ParseState(in)
		if err == nil {
			t.Errorf("ParseState(%q) = %v, nil; want error", in, got)
			continue
		}
		if got != 0 {
			t.Errorf("ParseState(%q) returned %v with an error", in, got)
		}
		msg := err.Error()
		if !strings.Contains(msg, `"`+in+`"`) {
			t.Errorf("error %q does not quote the input %q", msg, in)
		}
		for _, name := range collector.StateNames() {
			if !strings.Contains(msg, name) {
				t.Errorf("error %q does not list %s", msg, name)
			}
		}
	}
}

func TestStateNames(t *testing.T) {
	want := []string{
		"ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
		"CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV",
	}
	got := collector.StateNames()
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("StateNames = %v, want %v", got, want)
	}
	// Every name round-trips.
	for i, name := range got {
		s, err := collector.ParseState(name)
		if err != nil || s != collector.State(i+1) || s.String() != name {
			t.Errorf("ParseState(%q) = %v, %v; want state %d", name, s, err, i+1)
		}
	}
}

func TestStateString(t *testing.T) {
	tests := []struct {
		s    collector.State
		want string
	}{
		{collector.StateEstablished, "ESTABLISHED"},
		{collector.StateNewSynRecv, "NEW_SYN_RECV"},
		{0, "STATE(0)"},
		{13, "STATE(13)"},
		{255, "STATE(255)"},
	}
	for _, tc := range tests {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("State(%d).String() = %q, want %q", uint8(tc.s), got, tc.want)
		}
	}
}

func TestStateJSON(t *testing.T) {
	b, err := json.Marshal(collector.StateCloseWait)
	if err != nil || string(b) != `"CLOSE_WAIT"` {
		t.Fatalf("Marshal(CLOSE_WAIT) = %s, %v", b, err)
	}
	b, err = json.Marshal(struct {
		S collector.State            `json:"s"`
		M map[string]collector.State `json:"m"`
	}{collector.StateEstablished, map[string]collector.State{"x": collector.StateListen}})
	if err != nil || string(b) != `{"s":"ESTABLISHED","m":{"x":"LISTEN"}}` {
		t.Fatalf("Marshal(struct) = %s, %v", b, err)
	}
	if b, _ := json.Marshal(collector.State(99)); string(b) != `"STATE(99)"` {
		t.Fatalf("Marshal(99) = %s", b)
	}

	var s collector.State
	if err := json.Unmarshal([]byte(`"time-wait"`), &s); err != nil || s != collector.StateTimeWait {
		t.Fatalf("Unmarshal(time-wait) = %v, %v", s, err)
	}
	if err := json.Unmarshal([]byte(`"bogus"`), &s); err == nil {
		t.Fatal("Unmarshal(bogus) succeeded")
	}
	if s != collector.StateTimeWait {
		t.Fatalf("failed Unmarshal changed the state to %v", s)
	}
	// What Marshal gives a state with no name reads back: the API's own
	// JSON (a snapshot's transition from state 0) must decode.
	for _, n := range []collector.State{0, 99} {
		b, _ := json.Marshal(n)
		var got collector.State = 5
		if err := json.Unmarshal(b, &got); err != nil || got != n {
			t.Errorf("Unmarshal(%s) = %v, %v; want %d", b, got, err, n)
		}
	}
}
