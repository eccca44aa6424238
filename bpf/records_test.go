package bpf

import (
	"bytes"
	"io"
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
	want := make([]GhostconnHolderRec, 3000) // past the first 1024 twice
	for i := range want {
		want[i] = GhostconnHolderRec{Cookie: uint64(i + 1), Ino: uint64(1000 + i), Pid: uint32(i), Fd: uint32(i % 7)}
	}
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&want[0])), len(want)*int(unsafe.Sizeof(want[0])))
	for name, r := range map[string]io.Reader{
		"whole":    bytes.NewReader(raw),
		"one byte": iotest.OneByteReader(bytes.NewReader(raw)),
		"halves":   iotest.HalfReader(bytes.NewReader(raw)),
	} {
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
