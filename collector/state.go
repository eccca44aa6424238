package collector

import (
	"fmt"
	"strings"
)

// State is a TCP state as the kernel numbers it (include/net/tcp_states.h).
type State uint8

// TCP states.
const (
	StateEstablished State = 1
	StateSynSent     State = 2
	StateSynRecv     State = 3
	StateFinWait1    State = 4
	StateFinWait2    State = 5
	StateTimeWait    State = 6
	StateClose       State = 7
	StateCloseWait   State = 8
	StateLastAck     State = 9
	StateListen      State = 10
	StateClosing     State = 11
	StateNewSynRecv  State = 12
	maxState               = StateNewSynRecv
)

var stateNames = [...]string{
	StateEstablished: "ESTABLISHED",
	StateSynSent:     "SYN_SENT",
	StateSynRecv:     "SYN_RECV",
	StateFinWait1:    "FIN_WAIT1",
	StateFinWait2:    "FIN_WAIT2",
	StateTimeWait:    "TIME_WAIT",
	StateClose:       "CLOSE",
	StateCloseWait:   "CLOSE_WAIT",
	StateLastAck:     "LAST_ACK",
	StateListen:      "LISTEN",
	StateClosing:     "CLOSING",
	StateNewSynRecv:  "NEW_SYN_RECV",
}

func (s State) String() string {
	if int(s) < len(stateNames) && stateNames[s] != "" {
		return stateNames[s]
	}
	return fmt.Sprintf("STATE(%d)", uint8(s))
}

// MarshalText makes states appear by name in JSON.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses a state name, case-insensitively, with - or _, or
// the STATE(n) form MarshalText gives a state with no name (0 in the
// transition that records a connection first found by a snapshot).
func (s *State) UnmarshalText(b []byte) error {
	var n uint8
	if _, err := fmt.Sscanf(string(b), "STATE(%d)", &n); err == nil && State(n).String() == string(b) {
		*s = State(n)
		return nil
	}
	v, err := ParseState(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// ParseState parses a state name such as "ESTABLISHED" or "close-wait".
func ParseState(name string) (State, error) {
	n := strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
	for i, s := range stateNames {
		if s != "" && s == n {
			return State(i), nil
		}
	}
	return 0, fmt.Errorf("unknown tcp state %q (want one of %s)", name, strings.Join(StateNames(), ", "))
}

// StateNames lists every state name.
func StateNames() []string {
	var out []string
	for _, s := range stateNames {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}
