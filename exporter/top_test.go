package exporter_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/ghostconn/ghostconn/exporter"
)

// TestAPITopMatchesConnections: /v1/top selects with the table's entries
// what /v1/connections selects with views: the same connections for every
// filter (search included), flagged first, with counts over all of them.
func TestAPITopMatchesConnections(t *testing.T) {
	api := exporter.NewAPI(tableSource{apiTable(t)})
	for _, q := range []string{
		"", "verdict=unresponsive", "verdict=ghost", "state=ESTABLISHED", "state=close-wait", "port=443", "port=8080",
		"pid=42", "comm=psql", "remote=192.168.0.0/16", "remote=10.0.0.3", "state=ESTABLISHED&port=5432",
		"search=psql", "search=192.168", "search=42", "search=:8080", "search=PSQL", "search=nothing-like-it",
	} {
		want := cookies(t, get(t, api, "/v1/connections?"+q))
		rec := get(t, api, "/v1/top?"+q)
		if rec.Code != http.StatusOK {
			t.Errorf("top?%s: %d %s", q, rec.Code, rec.Body)
			continue
		}
		var ans exporter.TopAnswer
		if err := json.Unmarshal(rec.Body.Bytes(), &ans); err != nil {
			t.Fatalf("top?%s: %v\n%s", q, err, rec.Body)
		}
		got := []uint64{}
		for _, v := range ans.Rows {
			got = append(got, v.Cookie)
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) || ans.Matched != len(want) {
			t.Errorf("top?%s: rows %v (matched %d), connections gives %v", q, got, ans.Matched, want)
		}
		if ans.Total != 3 || ans.ByState["ESTABLISHED"] != 2 || ans.ByState["CLOSE_WAIT"] != 1 || ans.Flagged != 1 || ans.ByVerdict["unresponsive"] != 1 || !ans.Ready {
			t.Errorf("top?%s: counts %+v", q, ans.Top)
		}
		if ans.RSSBytes == 0 || ans.CPUSeconds <= 0 {
			t.Errorf("top?%s: the agent's own RSS %d and CPU %f", q, ans.RSSBytes, ans.CPUSeconds)
		}
	}
	// Flagged first, and limit cuts.
	rec := get(t, api, "/v1/top?limit=1")
	var ans exporter.TopAnswer
	if err := json.Unmarshal(rec.Body.Bytes(), &ans); err != nil || len(ans.Rows) != 1 || ans.Rows[0].Cookie != 2 || ans.Matched != 3 {
		t.Errorf("top?limit=1: %v %+v, want the unresponsive connection (2) alone, 3 matched", err, ans)
	}
}

func TestAPITopRejectsBadParameters(t *testing.T) {
	api := exporter.NewAPI(tableSource{apiTable(t)})
	for q, want := range map[string]string{
		"limit=0":                            "want a number of rows from 1 to 1000",
		"limit=1001":                         "from 1 to 1000",
		"limit=x":                            "want a number of rows",
		"limit=1&limit=2":                    "limit given 2 times",
		"target=3":                           "top takes verdict",
		"closed=true":                        "top takes verdict",
		"sort=name":                          "unknown sort",
		"search=" + strings.Repeat("x", 129): "1 to 128 characters",
	} {
		rec := get(t, api, "/v1/top?"+q)
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), want) {
			t.Errorf("top?%.40s: %d %s, want 400 with %q", q, rec.Code, rec.Body, want)
		}
	}
}
