package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const dashboardPath = "grafana/ghostconn-dashboard.json"

type dsRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// dashboard mirrors the dashboard fields the tests read; the file has
// more (Grafana's own), so it is not decoded strictly.
type dashboard struct {
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name       string `json:"name"`
			Type       string `json:"type"`
			Query      any    `json:"query"`
			Datasource *dsRef `json:"datasource"`
			IncludeAll bool   `json:"includeAll"`
			AllValue   string `json:"allValue"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *dsRef `json:"datasource"`
	GridPos    struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		Datasource *dsRef `json:"datasource"`
		Expr       string `json:"expr"`
		RefID      string `json:"refId"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // rows
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(readFile(t, dashboardPath), &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return d
}

// dashboardQuery is one PromQL expression of the dashboard.
type dashboardQuery struct {
	where string // panel title and refId, or variable name
	expr  string // as written, with Grafana variables
	// labelValues is set for label_values(selector, label) variable
	// queries: expr is then the selector.
	labelValues string
}

var labelValuesRe = regexp.MustCompile(`^label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

func dashboardQueries(t *testing.T, d dashboard) []dashboardQuery {
	t.Helper()
	var out []dashboardQuery
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(string)
		m := labelValuesRe.FindStringSubmatch(q)
		if m == nil {
			t.Fatalf("variable %s: query %v is not label_values(selector, label)", v.Name, v.Query)
		}
		out = append(out, dashboardQuery{where: "variable " + v.Name, expr: m[1], labelValues: m[2]})
	}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				out = append(out, dashboardQuery{where: fmt.Sprintf("panel %q %s", p.Title, tg.RefID), expr: tg.Expr})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// expand substitutes Grafana's variables as Grafana would for one job, all
// instances and the given rate interval.
func expand(expr, job, rateInterval string) string {
	return strings.NewReplacer(
		"$__rate_interval", rateInterval,
		"$__interval", rateInterval,
		"${DS_PROMETHEUS}", "",
		`"$job"`, `"`+job+`"`,
		`"$instance"`, `".*"`,
	).Replace(expr)
}

func TestDashboardStructure(t *testing.T) {
	d := loadDashboard(t)
	if d.UID != "ghostconn" || d.Title == "" {
		t.Errorf("uid %q title %q", d.UID, d.Title)
	}
	if d.SchemaVersion < 36 || d.SchemaVersion > 41 {
		t.Errorf("schemaVersion %d, want about 39", d.SchemaVersion)
	}
	vars := map[string]int{}
	for i, v := range d.Templating.List {
		vars[v.Name] = i
	}
	want := dsRef{Type: "prometheus", UID: "${DS_PROMETHEUS}"}
	if i, ok := vars["DS_PROMETHEUS"]; !ok || d.Templating.List[i].Type != "datasource" || d.Templating.List[i].Query != "prometheus" {
		t.Error("want a datasource variable DS_PROMETHEUS of type prometheus")
	}
	for _, name := range []string{"job", "instance"} {
		i, ok := vars[name]
		if !ok {
			t.Errorf("no %s variable", name)
			continue
		}
		if v := d.Templating.List[i]; v.Type != "query" || v.Datasource == nil || *v.Datasource != want {
			t.Errorf("variable %s: type %s datasource %v", name, v.Type, v.Datasource)
		}
	}
	if i := vars["instance"]; !d.Templating.List[i].IncludeAll || d.Templating.List[i].AllValue != ".*" {
		t.Error(`instance: want includeAll with allValue ".*" (used as instance=~"$instance")`)
	}

	ids := map[int]bool{}
	type cell struct{ x, y int }
	used := map[cell]string{}
	titles := map[string]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		titles[p.Title] = true
		if p.Datasource == nil || *p.Datasource != want {
			t.Errorf("panel %q: datasource %v, want %v", p.Title, p.Datasource, want)
		}
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, g)
		}
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if other, ok := used[cell{x, y}]; ok {
					t.Fatalf("panels %q and %q overlap", other, p.Title)
				}
				used[cell{x, y}] = p.Title
			}
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.Datasource == nil || *tg.Datasource != want {
				t.Errorf("panel %q %s: datasource %v", p.Title, tg.RefID, tg.Datasource)
			}
			if tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("panel %q: refId %q empty or repeated", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
			if !strings.Contains(tg.Expr, `instance=~"$instance"`) || !strings.Contains(tg.Expr, `job=~"$job"`) {
				t.Errorf("panel %q %s ignores the job or instance variable: %s", p.Title, tg.RefID, tg.Expr)
			}
		}
	}
	for _, title := range []string{
		"Connections by state", "Flagged connections by verdict", "Verdicts raised",
		"Retransmits and keepalive probes", "Events lost", "Reconcile duration",
		"eBPF programs attached", "Agent memory (RSS)", "Agent CPU",
	} {
		if !titles[title] {
			t.Errorf("no panel %q", title)
		}
	}
	all := string(readFile(t, dashboardPath))
	for _, want := range []string{"histogram_quantile(0.5,", "histogram_quantile(0.99,", "process_resident_memory_bytes", "rate(process_cpu_seconds_total"} {
		if !strings.Contains(all, want) {
			t.Errorf("dashboard lacks %s", want)
		}
	}
	// Checked in formatted as Grafana exports it, so diffs stay readable.
	var buf bytes.Buffer
	if err := json.Indent(&buf, readFile(t, dashboardPath), "", "  "); err != nil || !bytes.Equal(bytes.TrimSpace(buf.Bytes()), bytes.TrimSpace(readFile(t, dashboardPath))) {
		t.Errorf("%s is not indented with two spaces (%v)", dashboardPath, err)
	}
}

// TestDashboardQueriesParse has promtool parse every dashboard query, with
// its variables expanded, as a recording rule.
func TestDashboardQueriesParse(t *testing.T) {
	promtool := requireTool(t, "promtool", "prometheus")
	qs := dashboardQueries(t, loadDashboard(t))
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, q := range qs {
		e, _ := json.Marshal(expand(q.expr, "ghostconn", "1m")) // a JSON string is a YAML string
		fmt.Fprintf(&rules, "      - record: dashboard_query_%d\n        expr: %s\n", i, e)
	}
	path := filepath.Join(t.TempDir(), "dashboard.rules.yml")
	os.WriteFile(path, []byte(rules.String()), 0o644)
	out := run(t, "", promtool, "check", "rules", path)
	if want := fmt.Sprintf("%d rules found", len(qs)); !strings.Contains(out, want) {
		t.Fatalf("promtool: %s (want %s)", out, want)
	}
	if !slices.ContainsFunc(qs, func(q dashboardQuery) bool { return strings.Contains(q.expr, "$__rate_interval") }) {
		t.Error("no query uses $__rate_interval")
	}
}
