package deploy

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ghostconn/ghostconn/internal/privtest"
)

// promClient queries a Prometheus server's HTTP API.
type promClient struct{ base string }

type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (s promSample) float(t *testing.T) float64 {
	t.Helper()
	str, _ := s.Value[1].(string)
	v, err := strconv.ParseFloat(str, 64)
	if err != nil {
		t.Fatalf("sample value %v: %v", s.Value, err)
	}
	return v
}

// get decodes the data of a successful API answer into data; a failed one
// is an error naming Prometheus's errorType and error.
func (p promClient) get(path string, params url.Values, data any) error {
	u := p.base + path
	if params != nil {
		u += "?" + params.Encode()
	}
	code, body, err := httpGet(u)
	if err != nil {
		return err
	}
	var r struct {
		Status    string          `json:"status"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
		Data      json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return fmt.Errorf("HTTP %d, not an API answer: %v: %s", code, err, tail(body, 300))
	}
	if r.Status != "success" {
		return fmt.Errorf("HTTP %d, status %q: %s: %s", code, r.Status, r.ErrorType, r.Error)
	}
	return json.Unmarshal(r.Data, data)
}

// query runs an instant query; it must succeed and return a vector.
func (p promClient) query(expr string) ([]promSample, error) {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := p.get("/api/v1/query", url.Values{"query": {expr}}, &data); err != nil {
		return nil, err
	}
	if data.ResultType != "vector" {
		return nil, fmt.Errorf("result type %s, want vector", data.ResultType)
	}
	var v []promSample
	return v, json.Unmarshal(data.Result, &v)
}

// fastGhostAlert returns the rules file with only the `for:` of
// GhostconnGhostConnections changed, to d.
func fastGhostAlert(t *testing.T, rules []byte, d string) []byte {
	t.Helper()
	lines := strings.Split(string(rules), "\n")
	in, changed := false, 0
	for i, l := range lines {
		trimmed := strings.TrimSpace(l)
		if strings.HasPrefix(trimmed, "- alert:") || strings.HasPrefix(trimmed, "- record:") {
			in = trimmed == "- alert: GhostconnGhostConnections"
		}
		if in && strings.HasPrefix(trimmed, "for:") {
			lines[i] = l[:strings.Index(l, "for:")] + "for: " + d
			changed++
		}
	}
	if changed != 1 {
		t.Fatalf("GhostconnGhostConnections: %d for: lines, want 1", changed)
	}
	return []byte(strings.Join(lines, "\n"))
}

// metricNames are the ghostconn and process metrics an expression reads.
var metricNameRe = regexp.MustCompile(`\b(ghostconn_[a-z0-9_]+|process_[a-z0-9_]+)\b`)

// TestPrometheusEndToEnd runs the agent and a real Prometheus server that
// scrapes it every second and evaluates the rules (the ghost alert's for:
// shortened to 2s), makes a ghost connection, and waits for the metric and
// the firing alert. Then every PromQL expression of the dashboard and of the
// rules is evaluated against that server.
func TestPrometheusEndToEnd(t *testing.T) {
	privtest.Require(t)
	promBin := requireTool(t, "prometheus", "prometheus")
	began := time.Now()
	phase := began
	var timings []string
	mark := func(what string) {
		timings = append(timings, fmt.Sprintf("%s %s", what, time.Since(phase).Round(10*time.Millisecond)))
		phase = time.Now()
	}

	agentBinary(t)
	mark("build")
	a := startAgent(t, nil, "--ghost-grace", "1s", "--reconcile-interval", "2s", "--metrics-process-label", "--metrics-pod-label")
	mark("agent ready")

	dir := t.TempDir()
	rulesFile := filepath.Join(dir, "ghostconn.rules.yml")
	if err := os.WriteFile(rulesFile, fastGhostAlert(t, readFile(t, rulesPath), "2s"), 0o644); err != nil {
		t.Fatal(err)
	}
	configFile := filepath.Join(dir, "prometheus.yml")
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %s
scrape_configs:
  - job_name: ghostconn
    static_configs:
      - targets: [%q]
`, rulesFile, a.metrics)
	if err := os.WriteFile(configFile, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	promAddr := freeAddr(t)
	prom := start(t, "prometheus", exec.Command(promBin,
		"--config.file="+configFile,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr,
		"--log.level=warn"))
	procs := []*proc{a.proc, prom}
	p := promClient{base: "http://" + promAddr}
	const wait = 60 * time.Second
	waitFor(t, wait, "prometheus ready", procs, func() (bool, string) {
		code, body, err := httpGet(p.base + "/-/ready")
		return err == nil && code == 200, fmt.Sprintf("%d %s %v", code, body, err)
	})
	waitFor(t, wait, "agent scraped", procs, func() (bool, string) {
		v, err := p.query(`up{job="ghostconn"} == 1`)
		return err == nil && len(v) == 1, fmt.Sprintf("%v %v", v, err)
	})
	mark("prometheus ready and scraping")

	// A ghost: the application closes its connection, but the dup that
	// TCPConn.File made keeps the socket open.
	makeGhost(t)
	ghostAt := time.Now()

	waitFor(t, wait, "ghost counted by Prometheus", procs, func() (bool, string) {
		v, err := p.query(`ghostconn_flagged_connections{verdict="ghost"}`)
		if err != nil || len(v) != 1 {
			return false, fmt.Sprintf("%v %v", v, err)
		}
		return v[0].float(t) >= 1, fmt.Sprintf("value %v", v[0].Value)
	})
	// This test's own ghost, not one another process on the host made:
	// the first holder is this process.
	comm := strings.TrimSpace(string(readFile(t, "/proc/self/comm")))
	waitFor(t, wait, "this test's ghost counted", procs, func() (bool, string) {
		v, err := p.query(fmt.Sprintf(`ghostconn_flagged_connections_by_process{verdict="ghost",process=%q} >= 1`, comm))
		return err == nil && len(v) == 1, fmt.Sprintf("%v %v", v, err)
	})
	mark("ghost in Prometheus")
	waitFor(t, wait, "ghost alert firing", procs, func() (bool, string) {
		v, err := p.query(`ALERTS{alertname="GhostconnGhostConnections",alertstate="firing"}`)
		return err == nil && len(v) == 1, fmt.Sprintf("%v %v", v, err)
	})
	mark("alert firing")
	t.Logf("ghost alert firing %s after the close", time.Since(ghostAt).Round(10*time.Millisecond))

	// The firing alert as Alertmanager would get it: labels and rendered
	// annotations.
	var al struct {
		Alerts []struct {
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
			State       string            `json:"state"`
		} `json:"alerts"`
	}
	if err := p.get("/api/v1/alerts", nil, &al); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, x := range al.Alerts {
		if x.Labels["alertname"] != "GhostconnGhostConnections" || x.State != "firing" {
			continue
		}
		found = true
		if x.Labels["severity"] != "warning" || x.Labels["verdict"] != "ghost" || x.Labels["instance"] != a.metrics || x.Labels["job"] != "ghostconn" {
			t.Errorf("alert labels %v", x.Labels)
		}
		if s := x.Annotations["summary"]; s != "Ghost TCP connections on "+a.metrics {
			t.Errorf("summary %q", s)
		}
		if r := x.Annotations["runbook"]; !strings.Contains(r, "On "+a.metrics+": sudo ghostconn ls --verdict ghost") {
			t.Errorf("runbook %q", r)
		}
		if d := x.Annotations["description"]; strings.Contains(d, "{{") || strings.Contains(d, "<no value>") {
			t.Errorf("description not rendered: %q", d)
		}
	}
	if !found {
		t.Errorf("GhostconnGhostConnections not in /api/v1/alerts: %+v", al.Alerts)
	}

	// Every rule evaluated without error.
	waitFor(t, wait, "every rule evaluated and healthy", procs, func() (bool, string) {
		var rd struct {
			Groups []struct {
				Rules []struct {
					Name      string `json:"name"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := p.get("/api/v1/rules", nil, &rd); err != nil {
			return false, err.Error()
		}
		n := 0
		for _, g := range rd.Groups {
			for _, r := range g.Rules {
				if r.Health != "ok" {
					return false, fmt.Sprintf("%s: health %q %s", r.Name, r.Health, r.LastError)
				}
				n++
			}
		}
		want := 0
		for _, g := range loadRules(t).Groups {
			want += len(g.Rules)
		}
		return n == want, fmt.Sprintf("%d rules loaded, want %d", n, want)
	})

	// Every expression of the dashboard, with its variables expanded as
	// Grafana would for job ghostconn and all instances, succeeds and
	// returns data (a misspelt metric or label returns none).
	qs := dashboardQueries(t, loadDashboard(t))
	var names []string
	for _, q := range qs {
		expr := expand(q.expr, "ghostconn", "1m")
		names = append(names, metricNameRe.FindAllString(expr, -1)...)
		v, err := p.query(expr)
		switch {
		case err != nil:
			t.Errorf("dashboard %s: %s: %v", q.where, expr, err)
		case len(v) == 0:
			t.Errorf("dashboard %s: %s: no data", q.where, expr)
		case q.labelValues != "":
			for _, s := range v {
				if s.Metric[q.labelValues] == "" {
					t.Errorf("dashboard %s: %s: a series without %s: %v", q.where, expr, q.labelValues, s.Metric)
				}
			}
		}
	}
	// Every expression of the rules succeeds (alert conditions are
	// mostly, and rightly, empty).
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			names = append(names, metricNameRe.FindAllString(r.Expr, -1)...)
			if _, err := p.query(r.Expr); err != nil {
				t.Errorf("rule %s%s: %s: %v", r.Alert, r.Record, r.Expr, err)
			}
		}
	}
	// And every metric they name is one the agent exports.
	var exported []string
	if err := p.get("/api/v1/label/__name__/values", nil, &exported); err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	for _, n := range slices.Compact(names) {
		if !slices.Contains(exported, n) {
			t.Errorf("metric %s is used by the dashboard or rules but the agent does not export it", n)
		}
	}
	mark("queries checked")
	t.Logf("end to end in %s: %s", time.Since(began).Round(10*time.Millisecond), strings.Join(timings, ", "))
}
