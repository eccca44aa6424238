package deploy

import (
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const (
	promDir   = "prometheus"
	rulesPath = "prometheus/ghostconn.rules.yml"
	rulesTest = "ghostconn.rules.test.yml"
)

// ruleFile mirrors a Prometheus rule file (and a PrometheusRule's spec).
type ruleFile struct {
	Groups []ruleGroup `json:"groups"`
}

type ruleGroup struct {
	Name  string `json:"name"`
	Rules []rule `json:"rules"`
}

type rule struct {
	Record      string            `json:"record,omitempty"`
	Alert       string            `json:"alert,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// ruleTests mirrors a promtool rule unit-test file.
type ruleTests struct {
	RuleFiles          []string `json:"rule_files"`
	EvaluationInterval string   `json:"evaluation_interval"`
	Tests              []struct {
		Name        string `json:"name"`
		Interval    string `json:"interval"`
		InputSeries []struct {
			Series string `json:"series"`
			Values string `json:"values"`
		} `json:"input_series"`
		AlertRuleTest []struct {
			EvalTime  string `json:"eval_time"`
			Alertname string `json:"alertname"`
			ExpAlerts []struct {
				ExpLabels      map[string]string `json:"exp_labels"`
				ExpAnnotations map[string]string `json:"exp_annotations"`
			} `json:"exp_alerts"`
		} `json:"alert_rule_test"`
		PromqlExprTest []struct {
			Expr       string `json:"expr"`
			EvalTime   string `json:"eval_time"`
			ExpSamples []struct {
				Labels string  `json:"labels"`
				Value  float64 `json:"value"`
			} `json:"exp_samples"`
		} `json:"promql_expr_test"`
	} `json:"tests"`
}

func loadRules(t *testing.T) ruleFile {
	t.Helper()
	var rf ruleFile
	decodeStrict(t, rulesPath, readFile(t, rulesPath), &rf)
	return rf
}

func alerts(rf ruleFile) []rule {
	var out []rule
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				out = append(out, r)
			}
		}
	}
	return out
}

func TestPromtoolCheckRules(t *testing.T) {
	promtool := requireTool(t, "promtool", "prometheus")
	out := run(t, "", promtool, "check", "rules", rulesPath)
	t.Log(strings.TrimSpace(out))
}

func TestPromtoolTestRules(t *testing.T) {
	promtool := requireTool(t, "promtool", "prometheus")
	out := run(t, promDir, promtool, "test", "rules", rulesTest)
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules:\n%s", out)
	}
}

// TestPromtoolCheckConfig checks the example configuration (and, through
// its rule_files, the rules).
func TestPromtoolCheckConfig(t *testing.T) {
	promtool := requireTool(t, "promtool", "prometheus")
	out := run(t, "", promtool, "check", "config", filepath.Join(promDir, "prometheus.yml"))
	if !strings.Contains(out, "SUCCESS: 1 rule files found") {
		t.Fatalf("promtool check config:\n%s", out)
	}
}

var recordingName = regexp.MustCompile(`^[a-z_]+:ghostconn_[a-z0-9_]+:[a-z0-9_]+$`)

func TestRulesConventions(t *testing.T) {
	rf := loadRules(t)
	seen := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			name := r.Alert + r.Record
			if (r.Alert == "") == (r.Record == "") {
				t.Errorf("group %s: a rule must be an alert or a recording rule: %+v", g.Name, r)
			}
			if seen[name] {
				t.Errorf("%s defined twice", name)
			}
			seen[name] = true
			if r.Record != "" && !recordingName.MatchString(r.Record) {
				t.Errorf("recording rule %s: want level:ghostconn_metric:operations", r.Record)
			}
		}
	}
	for _, name := range []string{
		"GhostconnGhostConnections", "GhostconnCloseWaitGrowing", "GhostconnSilentConnections",
		"GhostconnUnresponsivePeers", "GhostconnEventsLost", "GhostconnProgramNotAttached", "GhostconnAgentDown",
	} {
		if !seen[name] {
			t.Errorf("alert %s missing", name)
		}
	}
	for _, a := range alerts(rf) {
		if s := a.Labels["severity"]; s != "critical" && s != "warning" && s != "info" {
			t.Errorf("%s: severity %q", a.Alert, s)
		}
		for _, k := range []string{"summary", "description", "runbook"} {
			if !strings.Contains(a.Annotations[k], "{{ $labels.instance }}") {
				t.Errorf("%s: annotation %s does not name {{ $labels.instance }}: %q", a.Alert, k, a.Annotations[k])
			}
		}
		if !strings.Contains(a.Annotations["runbook"], "ghostconn") {
			t.Errorf("%s: runbook names no ghostconn command", a.Alert)
		}
	}
	if a := alertNamed(t, rf, "GhostconnGhostConnections"); !strings.Contains(a.Annotations["runbook"], "ghostconn ls --verdict ghost") {
		t.Errorf("ghost runbook %q: want ghostconn ls --verdict ghost", a.Annotations["runbook"])
	}
	if a := alertNamed(t, rf, "GhostconnAgentDown"); !strings.Contains(a.Expr, `up{job="ghostconn"}`) {
		t.Errorf("GhostconnAgentDown: %s", a.Expr)
	}
}

func alertNamed(t *testing.T, rf ruleFile, name string) rule {
	t.Helper()
	for _, a := range alerts(rf) {
		if a.Alert == name {
			return a
		}
	}
	t.Fatalf("no alert %s", name)
	return rule{}
}

// TestEveryAlertTestedBothWays: the unit tests have, for every alert, an
// evaluation where it fires and one where it must not; and every
// recording rule is checked.
func TestEveryAlertTestedBothWays(t *testing.T) {
	rf := loadRules(t)
	var rt ruleTests
	decodeStrict(t, rulesTest, readFile(t, filepath.Join(promDir, rulesTest)), &rt)
	if !slices.Equal(rt.RuleFiles, []string{filepath.Base(rulesPath)}) {
		t.Errorf("rule_files %v", rt.RuleFiles)
	}
	fires, quiet, recorded := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, tc := range rt.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
		for _, e := range tc.PromqlExprTest {
			recorded[e.Expr] = true
		}
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			switch {
			case r.Alert != "" && !fires[r.Alert]:
				t.Errorf("%s: no test where it fires", r.Alert)
			case r.Alert != "" && !quiet[r.Alert]:
				t.Errorf("%s: no test where it must not fire", r.Alert)
			case r.Record != "" && !recorded[r.Record]:
				t.Errorf("%s: recording rule not tested", r.Record)
			}
		}
	}
}
