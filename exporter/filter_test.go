package exporter

import (
	"net/url"
	"strings"
	"testing"
)

// TestParseFilterNamesTheSameBadValue: with several bad values the error
// names the first in a fixed order, every time (a map's order used to
// pick one at random).
func TestParseFilterNamesTheSameBadValue(t *testing.T) {
	q := url.Values{"sort": {"x"}, "port": {"0"}, "verdict": {"bogus"}, "remote": {"y"}}
	for i := 0; i < 50; i++ {
		_, err := ParseFilter(q)
		if err == nil || !strings.Contains(err.Error(), `unknown verdict "bogus"`) {
			t.Fatalf("try %d: %v, want the verdict named", i, err)
		}
	}
	q.Set("nosuch", "1")
	if _, err := ParseFilter(q); err == nil || !strings.Contains(err.Error(), `unknown parameter "nosuch"`) {
		t.Fatalf("with an unknown parameter: %v, want it named first", err)
	}
}
