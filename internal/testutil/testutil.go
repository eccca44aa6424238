// Package testutil holds helpers shared by ghostconn's tests.
package testutil

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
)

// MinInterval and MaxInterval bound the wait between two calls of an
// Eventually condition.
const (
	MinInterval = 20 * time.Millisecond
	MaxInterval = 250 * time.Millisecond
)

// TB is the part of testing.TB that Eventually uses; *testing.T and
// *testing.B satisfy it.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// Eventually calls cond until it reports ok and fails t if it has not
// within timeout, with "timed out after <timeout> waiting for <what>:
// <detail>", detail being what the last call of cond returned. cond runs
// in the calling goroutine, so it may itself call t.Fatalf (for example
// when a process it waits on has exited). Between calls it waits four
// times as long as the last call took, but at least MinInterval and at
// most MaxInterval, so that a condition that runs a command costs about a
// fifth of a CPU and one that blocks for a while is retried soon. cond is
// called at least once, and once more after the deadline if the last wait
// crossed it.
func Eventually(t TB, timeout time.Duration, what string, cond func() (ok bool, detail string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		start := time.Now()
		ok, detail := cond()
		if ok {
			return
		}
		if !start.Before(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, detail)
			return
		}
		wait := min(max(MinInterval, 4*time.Since(start)), MaxInterval)
		time.Sleep(min(wait, max(time.Until(deadline), 0)+time.Millisecond))
	}
}

// SyncBuffer is a bytes.Buffer that a process's output (or a logger) and
// the test may use at once.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write implements io.Writer.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ProgramsGone fails t unless, within timeout, none of the eBPF programs
// ids names (program name -> id, as an agent's status reports them) is
// loaded any more: what an agent that stopped or died must leave.
func ProgramsGone(t TB, timeout time.Duration, ids map[string]uint32) {
	t.Helper()
	if len(ids) == 0 {
		t.Fatalf("no program ids to check: the agent reported none")
	}
	Eventually(t, timeout, "every program of the agent to be unloaded", func() (bool, string) {
		var left []string
		for name, id := range ids {
			p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err == nil {
				p.Close()
			}
			left = append(left, fmt.Sprintf("%s (id %d): %v", name, id, err))
		}
		sort.Strings(left)
		return len(left) == 0, "still loaded: " + strings.Join(left, "; ")
	})
}
