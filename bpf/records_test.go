package bpf

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"unsafe"
)

// readRecords reads an iterator's output into records whatever sizes its
// reads come in, across the growth of its buffer, and keeps the count as
// the next read's hint.
func TestReadRecordsSplitReads(t *testing.T) {
	want, raw := holderRecs(3000) // past the first 1024 twice
	for name, r := range splitReads(raw) {
		var hint atomic.Int64
		got, err := readRecords[GhostconnHolderRec](io.NopCloser(r), &hint)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d records, want %d", name, len(got), len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("%s: record %d is %+v, want %+v", name, i, got[i], want[i])
			}
		}
		if hint.Load() != int64(len(want)) {
			t.Errorf("%s: hint %d, want %d", name, hint.Load(), len(want))
		}
	}
	_, err := readRecords[GhostconnHolderRec](io.NopCloser(bytes.NewReader(raw[:len(raw)-1])), nil)
	if err == nil || !strings.Contains(err.Error(), "ends") {
		t.Errorf("truncated output: %v, want an error naming the partial record", err)
	}
	got, err := readRecords[GhostconnHolderRec](io.NopCloser(bytes.NewReader(nil)), nil)
	if err != nil || len(got) != 0 {
		t.Errorf("empty output: %d records, %v", len(got), err)
	}
}

// eachRecord hands an iterator's records over in chunks of its buffer's
// size whatever sizes its reads come in, each record whole and in order,
// and fails on a partial record at the end or a read error, after handing
// over what it read before.
func TestEachRecordChunks(t *testing.T) {
	want, raw := holderRecs(2500) // two full chunks of 1000 and a tail
	for name, r := range splitReads(raw) {
		var got []GhostconnHolderRec
		var sizes []int
		n, err := eachRecord(io.NopCloser(r), 1000, func(recs []GhostconnHolderRec) {
			sizes = append(sizes, len(recs))
			got = append(got, recs...)
		})
		if err != nil || n != len(want) {
			t.Fatalf("%s: %d records, %v", name, n, err)
		}
		if !slices.Equal(sizes, []int{1000, 1000, 500}) {
			t.Errorf("%s: chunks of %v, want 1000, 1000, 500", name, sizes)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s: records differ from what was written", name)
		}
	}
	seen := 0
	_, err := eachRecord(io.NopCloser(bytes.NewReader(raw[:len(raw)-1])), 1000, func(recs []GhostconnHolderRec) { seen += len(recs) })
	if err == nil || !strings.Contains(err.Error(), "ends") || seen != len(want)-1 {
		t.Errorf("truncated output: %v after %d records, want an error naming the partial record after %d", err, seen, len(want)-1)
	}
	seen = 0
	broken := io.MultiReader(bytes.NewReader(raw[:1500*int(unsafe.Sizeof(want[0]))]), iotest.ErrReader(errors.New("gone")))
	if _, err := eachRecord(io.NopCloser(broken), 1000, func(recs []GhostconnHolderRec) { seen += len(recs) }); err == nil || !strings.Contains(err.Error(), "gone") || seen != 1000 {
		t.Errorf("read error: %v after %d records, want it after the first chunk of 1000", err, seen)
	}
	if n, err := eachRecord(io.NopCloser(bytes.NewReader(nil)), 1000, func([]GhostconnHolderRec) { t.Error("called on empty output") }); err != nil || n != 0 {
		t.Errorf("empty output: %d records, %v", n, err)
	}
}

// holderRecs is n distinct holder records and their bytes, as an
// iterator writes them.
func holderRecs(n int) ([]GhostconnHolderRec, []byte) {
	recs := make([]GhostconnHolderRec, n)
	for i := range recs {
		recs[i] = GhostconnHolderRec{Cookie: uint64(i + 1), Ino: uint64(1000 + i), Pid: uint32(i), Fd: uint32(i % 7)}
	}
	return recs, unsafe.Slice((*byte)(unsafe.Pointer(&recs[0])), n*int(unsafe.Sizeof(recs[0])))
}

// splitReads are readers of raw whose reads come whole, a byte at a
// time, and in halves.
func splitReads(raw []byte) map[string]io.Reader {
	return map[string]io.Reader{
		"whole":    bytes.NewReader(raw),
		"one byte": iotest.OneByteReader(bytes.NewReader(raw)),
		"halves":   iotest.HalfReader(bytes.NewReader(raw)),
	}
}
