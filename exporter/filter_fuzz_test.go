package exporter_test

import (
	"net/url"
	"reflect"
	"testing"

	"github.com/ghostconn/ghostconn/exporter"
)

// FuzzParseFilter: any query string either parses or is refused with an
// error, never a panic; what parses survives a round trip through Values.
func FuzzParseFilter(f *testing.F) {
	for _, s := range []string{
		"", "verdict=ghost", "state=close-wait&port=80", "remote=10.0.0.0/8&pid=42&comm=nginx",
		"target=127.0.0.1:80&history=true&closed=1", "target=12345", "sort=idle", "remote=::1",
		"verdict=bogus", "port=0", "remote=10.0.0.0/33", "nosuch=1", "pid=1&pid=2", "%zz",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		filter, err := exporter.ParseFilter(q)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		again, err := exporter.ParseFilter(filter.Values())
		if err != nil {
			t.Fatalf("Values() of a parsed filter does not parse: %v (%v)", err, filter.Values())
		}
		if !reflect.DeepEqual(filter, again) {
			t.Fatalf("round trip changed the filter: %+v -> %+v", filter, again)
		}
	})
}

func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"127.0.0.1:80", "[::1]:443", "12345", "socket:[4242]", "sk:7", "", "x", "1.2.3.4", "-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		target, err := exporter.ParseTarget(s)
		if err != nil {
			return
		}
		if !target.Addr.IsValid() && target.N == 0 {
			t.Fatalf("target %q parsed to nothing", s)
		}
	})
}
