package testutil_test

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ghostconn/ghostconn/internal/testutil"
)

// fakeTB records a Fatalf and stops the goroutine, as testing.T does.
type fakeTB struct {
	msg string
}

func (*fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// run calls Eventually on a fake in its own goroutine and returns the
// failure message ("" when it succeeded) and how long it took.
func run(timeout time.Duration, cond func() (bool, string)) (string, time.Duration) {
	f := &fakeTB{}
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		testutil.Eventually(f, timeout, "the thing", cond)
	}()
	<-done
	return f.msg, time.Since(start)
}

func TestEventuallySucceedsOnceCondHolds(t *testing.T) {
	calls := 0
	msg, _ := run(10*time.Second, func() (bool, string) {
		calls++
		return calls == 3, fmt.Sprintf("call %d", calls)
	})
	if msg != "" || calls != 3 {
		t.Fatalf("failed with %q after %d calls, want success on the third", msg, calls)
	}
}

func TestEventuallyTimesOutWithLastDetail(t *testing.T) {
	calls := 0
	msg, took := run(200*time.Millisecond, func() (bool, string) {
		calls++
		return false, fmt.Sprintf("call %d", calls)
	})
	want := fmt.Sprintf("timed out after 200ms waiting for the thing: call %d", calls)
	if msg != want {
		t.Errorf("message %q, want %q", msg, want)
	}
	if calls < 2 {
		t.Errorf("cond called %d times in 200ms, want it polled", calls)
	}
	if took < 200*time.Millisecond || took > 2*time.Second {
		t.Errorf("gave up after %s, want just after 200ms", took)
	}
}

func TestEventuallyCallsCondAtLeastOnce(t *testing.T) {
	calls := 0
	msg, _ := run(0, func() (bool, string) { calls++; return true, "" })
	if msg != "" || calls != 1 {
		t.Fatalf("timeout 0: failed with %q after %d calls, want one successful call", msg, calls)
	}
	msg, _ = run(0, func() (bool, string) { return false, "never" })
	if !strings.HasSuffix(msg, ": never") {
		t.Fatalf("timeout 0 with a false cond: %q, want a failure with its detail", msg)
	}
}

// A slow condition is called less often than a cheap one, and one that
// blocks for long is retried after at most MaxInterval.
func TestEventuallyBacksOffForSlowCond(t *testing.T) {
	calls := 0
	run(400*time.Millisecond, func() (bool, string) {
		calls++
		time.Sleep(50 * time.Millisecond)
		return false, ""
	})
	// Each round is at least 50ms of cond and 200ms of waiting.
	if calls > 3 {
		t.Fatalf("a 50ms cond was called %d times in 400ms, want at most 3", calls)
	}
}

func TestEventuallyRetriesBlockingCondSoon(t *testing.T) {
	var starts []time.Time
	run(1200*time.Millisecond, func() (bool, string) {
		starts = append(starts, time.Now())
		time.Sleep(300 * time.Millisecond)
		return false, ""
	})
	for i := 1; i < len(starts); i++ {
		if gap := starts[i].Sub(starts[i-1]); gap > 300*time.Millisecond+testutil.MaxInterval+200*time.Millisecond {
			t.Errorf("call %d started %s after the previous one, want at most 300ms + MaxInterval (plus slack)", i, gap)
		}
	}
	if len(starts) < 2 {
		t.Errorf("a 300ms cond was called %d times in 1.2s, want it retried", len(starts))
	}
}
