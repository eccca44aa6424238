package collector

import (
	"time"

	"golang.org/x/sys/unix"
)

// Clock tells the table the time. The table measures and schedules on the
// monotonic clock, which a wall-clock step (NTP, `date -s`) does not move,
// and uses the wall clock only to show times.
type Clock interface {
	// Now returns the wall-clock time and the CLOCK_MONOTONIC reading, in
	// nanoseconds, of one instant.
	Now() (wall time.Time, mono int64)
}

// hostClock is the host's clock, which every table uses unless a test
// gives it another.
var hostClock Clock = newSystemClock()

// systemClock reads both clocks with a single time.Now: on Linux, Go's
// monotonic reading is CLOCK_MONOTONIC relative to an origin of its own,
// which base and baseMono pin once. The two values then come from the same
// instant, so their difference moves only when the wall clock is stepped
// or slewed.
type systemClock struct {
	base     time.Time
	baseMono int64
}

func newSystemClock() *systemClock {
	base, mono := pairClocks()
	return &systemClock{base: base, baseMono: mono}
}

// pairClocks reads the wall clock (with Go's monotonic reading) and
// CLOCK_MONOTONIC at one instant: time.Now between two CLOCK_MONOTONIC
// reads, the tightest of a few tries, paired with their midpoint. A single
// pair of reads can be split by a preemption (milliseconds on a busy host
// at start-up), which would shift every kernel time the agent shows by
// that much, and differently in each run.
func pairClocks() (wall time.Time, mono int64) {
	best := int64(-1)
	for i := 0; i < 8; i++ {
		var a, b unix.Timespec
		_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &a)
		w := time.Now()
		_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &b)
		if gap := b.Nano() - a.Nano(); best < 0 || gap < best {
			best, wall, mono = gap, w, a.Nano()+gap/2
		}
	}
	return wall, mono
}

// Now implements Clock.
func (c *systemClock) Now() (time.Time, int64) {
	w := time.Now()
	return w, c.baseMono + int64(w.Sub(c.base)) // Sub of two monotonic readings
}

// clockStepTolerance is how far the wall clock may drift from the table's
// timeline before the table takes it for a step and moves the times it
// holds. Below it, a slewing clock (NTP corrects at most 0.5ms a second,
// chrony by default up to 83ms) leaves the timeline alone, so that
// rebasing, which visits every connection, stays rare.
const clockStepTolerance = 100 * time.Millisecond

// timeline maps between the table's times and the monotonic clock. Every
// time the table holds is on it: a wall-clock time as of the last step,
// that is the monotonic reading plus off. Comparing two of them, or one
// with the table's now, is then comparing monotonic readings, whatever the
// wall clock did in between, while each still shows as the wall-clock
// time it was, give or take clockStepTolerance.
type timeline struct {
	clock Clock
	// off is the wall-clock time minus the monotonic reading, in
	// nanoseconds, as of the last step.
	off int64
}

func newTimeline(c Clock) timeline {
	w, m := c.Now()
	return timeline{clock: c, off: w.UnixNano() - m}
}

// now reads the clock. It returns the monotonic reading and, when the wall
// clock was stepped since the last reading, by how much; the caller must
// then move the times it holds by that step to keep them on the timeline.
func (l *timeline) now() (mono int64, step time.Duration) {
	w, m := l.clock.Now()
	d := w.UnixNano() - m - l.off
	if d > int64(clockStepTolerance) || d < -int64(clockStepTolerance) {
		l.off += d
		step = time.Duration(d)
	}
	return m, step
}

// at is the time on the timeline of monotonic reading mono.
func (l *timeline) at(mono int64) time.Time { return time.Unix(0, mono+l.off) }

// mono is the monotonic reading of t, a time on the timeline.
func (l *timeline) mono(t time.Time) int64 { return t.UnixNano() - l.off }

// stamp is a time a connection holds, in Unix nanoseconds on the table's
// timeline (see timeline): 8 bytes where a time.Time takes 24, for the nine
// times every tracked connection keeps. Zero is no time (time.Time's zero
// value); the Unix epoch itself is not a time the table ever holds.
type stamp int64

// stampOf is t as a stamp.
func stampOf(t time.Time) stamp {
	if t.IsZero() {
		return 0
	}
	return stamp(t.UnixNano())
}

// Time is s as a time.Time, without a monotonic reading (every time on the
// timeline is a wall-clock time as of the last step), or the zero Time.
func (s stamp) Time() time.Time {
	if s == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(s))
}

// IsZero reports whether s is no time.
func (s stamp) IsZero() bool { return s == 0 }

// Before reports whether s is before t, as time.Time's Before does.
func (s stamp) Before(t time.Time) bool { return s.Time().Before(t) }

// After reports whether s is after t, as time.Time's After does.
func (s stamp) After(t time.Time) bool { return s.Time().After(t) }

// Equal reports whether s and t are the same instant.
func (s stamp) Equal(t time.Time) bool { return s.Time().Equal(t) }

// Sub is s - t, as time.Time's Sub is.
func (s stamp) Sub(t time.Time) time.Duration { return s.Time().Sub(t) }

// Add is s + d as a time.Time.
func (s stamp) Add(d time.Duration) time.Time { return s.Time().Add(d) }

// compareStamp is time.Time's Compare for stamps.
func compareStamp(a, b stamp) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
