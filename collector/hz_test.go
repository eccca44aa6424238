package collector

import (
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
)

func TestParseHZ(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    int
		wantErr string
	}{
		{"typical config", "# Timer\nCONFIG_HZ_250=y\n# CONFIG_HZ_1000 is not set\nCONFIG_HZ=250\nCONFIG_SCHED_HRTICK=y\n", 250, ""},
		{"no trailing newline", "CONFIG_HZ=1000", 1000, ""},
		{"first line wins", "CONFIG_HZ=100\nCONFIG_HZ=300\n", 100, ""},
		{"empty", "", 0, "no CONFIG_HZ line"},
		{"only choice symbols", "CONFIG_HZ_250=y\nCONFIG_HZ_PERIODIC=y\n", 0, "no CONFIG_HZ line"},
		{"commented out", "# CONFIG_HZ=250\n", 0, "no CONFIG_HZ line"},
		{"not a number", "CONFIG_HZ=abc\n", 0, `bad CONFIG_HZ="abc"`},
		{"empty value", "CONFIG_HZ=\n", 0, `bad CONFIG_HZ=""`},
		{"zero", "CONFIG_HZ=0\n", 0, `bad CONFIG_HZ="0"`},
		{"negative", "CONFIG_HZ=-250\n", 0, `bad CONFIG_HZ="-250"`},
		{"trailing space", "CONFIG_HZ=250 \n", 0, `bad CONFIG_HZ="250 "`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseHZ(strings.NewReader(tc.in))
			if tc.wantErr == "" {
				if err != nil || got != tc.want {
					t.Fatalf("parseHZ = %d, %v; want %d, nil", got, err, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("parseHZ = %d, nil; want error %q", got, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %q does not mention %q", err, tc.wantErr)
			}
			if got != 0 {
				t.Fatalf("parseHZ returned %d with an error", got)
			}
		})
	}
}

func TestParseHZReadError(t *testing.T) {
	boom := errors.New("boom")
	if _, err := parseHZ(iotest.ErrReader(boom)); !errors.Is(err, boom) {
		t.Fatalf("parseHZ error = %v, want %v", err, boom)
	}
}

func TestHZFromConfig(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "config-6.1.0")
	if err := os.WriteFile(plain, []byte("CONFIG_HZ_300=y\nCONFIG_HZ=300\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if hz, err := hzFromConfig(plain); err != nil || hz != 300 {
		t.Fatalf("hzFromConfig(plain) = %d, %v; want 300", hz, err)
	}

	gz := filepath.Join(dir, "config.gz")
	f, err := os.Create(gz)
	if err != nil {
		t.Fatal(err)
	}
	w := gzip.NewWriter(f)
	if _, err := w.Write([]byte("CONFIG_HZ=1000\n")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if hz, err := hzFromConfig(gz); err != nil || hz != 1000 {
		t.Fatalf("hzFromConfig(gz) = %d, %v; want 1000", hz, err)
	}

	// A .gz file that is not gzip is an error, not a plain-text read.
	notgz := filepath.Join(dir, "bad.gz")
	if err := os.WriteFile(notgz, []byte("CONFIG_HZ=250\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if hz, err := hzFromConfig(notgz); err == nil {
		t.Fatalf("hzFromConfig(not gzip) = %d, nil; want error", hz)
	}

	if _, err := hzFromConfig(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("hzFromConfig(missing) error = %v, want ErrNotExist", err)
	}
}
