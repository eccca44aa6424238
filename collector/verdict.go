package collector

import "time"

// Verdict is one finding about a connection, with its evidence.
type Verdict struct {
	Kind   string    `json:"kind"`
	Since  time.Time `json:"since"`
	Detail string    `json:"detail"`
}
