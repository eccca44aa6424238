package collector_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/ghostconn/ghostconn/collector"
	"github.com/ghostconn/ghostconn/internal/privtest"
	"github.com/ghostconn/ghostconn/internal/testutil"
)

// faultyReader returns the injected errors, one per read, before it reads
// from the real ring buffer; with forever set it never reads and returns
// its last error every time.
type faultyReader struct {
	collector.RingReader
	mu      sync.Mutex
	inject  []error
	forever bool
}

func (r *faultyReader) ReadInto(rec *ringbuf.Record) error {
	r.mu.Lock()
	if len(r.inject) > 0 {
		err := r.inject[0]
		if !r.forever || len(r.inject) > 1 {
			r.inject = r.inject[1:]
		}
		r.mu.Unlock()
		return err
	}
	r.mu.Unlock()
	return r.RingReader.ReadInto(rec)
}

// runWithReader loads the real programs, puts r in front of the ring
// buffer, and runs the collector. The result of Run arrives on done.
func runWithReader(t *testing.T, cfg collector.Config, r *faultyReader, logs io.Writer) (c *collector.Collector, done chan error, cancel func()) {
	t.Helper()
	privtest.Require(t)
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	c, err := collector.New(cfg)
	if err != nil {
		t.Fatalf("start collector: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	c.WrapReader(func(real collector.RingReader) collector.RingReader {
		r.RingReader = real
		return r
	})
	ctx, cancel := context.WithCancel(context.Background())
	done = make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	return c, done, cancel
}

// TestReaderErrorsAreCountedAndRetried: read errors other than a closed
// reader (a truncated record, an I/O error) are counted, logged once per
// run of failures, and retried; events keep flowing into the table
// afterwards and the agent stays ready. A flush is a drain, not an error.
func TestReaderErrorsAreCountedAndRetried(t *testing.T) {
	r := &faultyReader{inject: []error{
		io.ErrUnexpectedEOF,
		fmt.Errorf("read ring: %w", unix.EIO),
		ringbuf.ErrFlushed,
		io.ErrUnexpectedEOF,
	}}
	var logs testutil.SyncBuffer
	// Reconcile only at the seed, so the connection below can reach the
	// table through events alone.
	c, done, cancel := runWithReader(t, collector.Config{ReconcileInterval: time.Hour}, r, &logs)
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("collector run: %v", err)
		}
	}()
	select {
	case <-c.Ready():
	case err := <-done:
		t.Fatalf("collector stopped before ready: %v\n%s", err, logs.String())
	case <-time.After(30 * time.Second):
		t.Fatal("collector not ready after 30s")
	}

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conn, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Its delta (drained whatever the ring reader does) announces it; its
	// end record, read from the ring after the injected errors, closes it.
	cv := waitFor(t, c, "the client connection",
		tuple(conn.LocalAddr().String(), ln.Addr().String(), collector.StateEstablished))
	conn.(*net.TCPConn).SetLinger(0)
	conn.Close()
	waitFor(t, c, "the client's end record, read after the read errors", func(v *collector.ConnView) bool {
		return v.Cookie == cv.Cookie && v.State == collector.StateClose
	})

	st, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.ReaderErrors != 3 {
		t.Errorf("reader_errors = %d, want 3 (two EOFs and an EIO; the flush is not an error)", st.ReaderErrors)
	}
	if !st.Ready || st.NotReadyReason != "" {
		t.Errorf("ready = %v (%q) after recoverable read errors, want ready", st.Ready, st.NotReadyReason)
	}
	if n := strings.Count(logs.String(), "reading the event ring buffer failed"); n != 2 {
		t.Errorf("logged the failure %d times, want once per run of failures (2):\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "works again") {
		t.Errorf("no log that reading recovered:\n%s", logs.String())
	}
}

// TestReaderThatCannotGoOnStopsRun: a reader that keeps failing makes the
// collector not ready, with the reason, and Run returns the error (the
// agent then exits non-zero so a supervisor restarts it).
func TestReaderThatCannotGoOnStopsRun(t *testing.T) {
	r := &faultyReader{inject: []error{fmt.Errorf("read ring: %w", unix.EIO)}, forever: true}
	var logs testutil.SyncBuffer
	c, done, cancel := runWithReader(t, collector.Config{ReaderGiveUp: 500 * time.Millisecond}, r, &logs)
	defer cancel()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("Run still running 30s after the reader started failing for good\n%s", logs.String())
	}
	if err == nil || !errors.Is(err, unix.EIO) || !strings.Contains(err.Error(), "event reader") {
		t.Fatalf("Run = %v, want the event reader's error wrapping EIO", err)
	}
	ready, reason := c.Readiness()
	if ready || !strings.Contains(reason, "event reader") {
		t.Errorf("Readiness = %v, %q; want not ready, naming the event reader", ready, reason)
	}
	st, serr := c.Status()
	if serr != nil {
		t.Fatal(serr)
	}
	if st.Ready || st.ReaderErrors == 0 || st.NotReadyReason != reason {
		t.Errorf("status: ready=%v reader_errors=%d reason=%q; want not ready, errors counted, reason %q", st.Ready, st.ReaderErrors, st.NotReadyReason, reason)
	}
}
