package deploy

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/ghostconn/ghostconn/exporter"
)

// No cluster is available to these tests: every manifest is decoded
// strictly (an unknown or misspelt field fails) into the Kubernetes API's
// own Go types, and the properties the agent depends on are checked.

const (
	k8sDir      = "kubernetes"
	operatorDir = "kubernetes/prometheus-operator"
	namespace   = "ghostconn"
)

type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace,omitempty"`
	Resources  []string `json:"resources,omitempty"`
	Components []string `json:"components,omitempty"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
	} `json:"images,omitempty"`
}

// serviceMonitor mirrors the monitoring.coreos.com/v1 fields used here.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobLabel          string `json:"jobLabel"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path"`
			Interval      string `json:"interval"`
			ScrapeTimeout string `json:"scrapeTimeout"`
			Relabelings   []struct {
				SourceLabels []string `json:"sourceLabels"`
				TargetLabel  string   `json:"targetLabel"`
				Action       string   `json:"action"`
			} `json:"relabelings"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// prometheusRule mirrors monitoring.coreos.com/v1 PrometheusRule.
type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ruleFile `json:"spec"`
}

// decodeStrict decodes YAML into v as strictly as the API server does:
// duplicate keys, unknown fields and fields whose case differs from the
// API's (which encoding/json alone would accept) all fail.
func decodeStrict(t *testing.T, name string, data []byte, v any) {
	t.Helper()
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	strict, err := kjson.UnmarshalStrict(js, v, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		t.Fatalf("%s: decoding into %T: %v", name, v, err)
	}
	if len(strict) > 0 {
		t.Fatalf("%s: strict decoding into %T: %v", name, v, strict)
	}
}

// decodeObject decodes one manifest strictly into the type its kind names
// and checks apiVersion.
func decodeObject(t *testing.T, name string, data []byte) any {
	t.Helper()
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(data, &tm); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var obj any
	want := "v1"
	switch tm.Kind {
	case "Namespace":
		obj = &corev1.Namespace{}
	case "ServiceAccount":
		obj = &corev1.ServiceAccount{}
	case "Service":
		obj = &corev1.Service{}
	case "DaemonSet":
		obj, want = &appsv1.DaemonSet{}, "apps/v1"
	case "ServiceMonitor":
		obj, want = &serviceMonitor{}, "monitoring.coreos.com/v1"
	case "PrometheusRule":
		obj, want = &prometheusRule{}, "monitoring.coreos.com/v1"
	default:
		t.Fatalf("%s: unexpected kind %q", name, tm.Kind)
	}
	if tm.APIVersion != want {
		t.Errorf("%s: apiVersion %q, want %q", name, tm.APIVersion, want)
	}
	decodeStrict(t, name, data, obj)
	return obj
}

// loadKustomization decodes dir/kustomization.yaml and every resource it
// lists, each of which must exist.
func loadKustomization(t *testing.T, dir string) (kustomization, map[string]any) {
	t.Helper()
	var k kustomization
	decodeStrict(t, dir+"/kustomization.yaml", readFile(t, filepath.Join(dir, "kustomization.yaml")), &k)
	objs := map[string]any{}
	for _, r := range k.Resources {
		p := filepath.Join(dir, r)
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("%s/kustomization.yaml lists %s: %v", dir, r, err)
		}
		if bytes.Contains(data, []byte("\n---")) {
			t.Fatalf("%s: one object per file expected", p)
		}
		obj := decodeObject(t, p, data)
		kind := reflect.TypeOf(obj).Elem().Name()
		if _, dup := objs[kind]; dup {
			t.Fatalf("%s: second %s", p, kind)
		}
		objs[kind] = obj
	}
	return k, objs
}

// baseObjects returns the base's objects by kind.
func baseObjects(t *testing.T) map[string]any {
	t.Helper()
	k, objs := loadKustomization(t, k8sDir)
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" || k.Namespace != namespace {
		t.Errorf("kustomization.yaml: %s %s namespace %q", k.APIVersion, k.Kind, k.Namespace)
	}
	for _, kind := range []string{"Namespace", "ServiceAccount", "Service", "DaemonSet"} {
		if objs[kind] == nil {
			t.Fatalf("kustomization.yaml has no %s", kind)
		}
	}
	// Every manifest in the directory is listed (none forgotten).
	files, _ := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" && !slices.Contains(k.Resources, b) {
			t.Errorf("%s is not listed in kustomization.yaml", f)
		}
	}
	return objs
}

func TestKustomizationResourcesDecodeStrictly(t *testing.T) {
	objs := baseObjects(t)
	for kind, obj := range objs {
		meta := reflect.ValueOf(obj).Elem().FieldByName("ObjectMeta").Interface().(metav1.ObjectMeta)
		if meta.Name != "ghostconn" {
			t.Errorf("%s is named %q", kind, meta.Name)
		}
		if kind != "Namespace" && meta.Namespace != namespace {
			t.Errorf("%s is in namespace %q, want %q", kind, meta.Namespace, namespace)
		}
	}
	k, comp := loadKustomization(t, operatorDir)
	if k.APIVersion != "kustomize.config.k8s.io/v1alpha1" || k.Kind != "Component" {
		t.Errorf("%s/kustomization.yaml is %s %s, want a kustomize Component (it needs CRDs the base must not)", operatorDir, k.APIVersion, k.Kind)
	}
	for _, kind := range []string{"serviceMonitor", "prometheusRule"} {
		if comp[kind] == nil {
			t.Errorf("%s lists no %s", operatorDir, kind)
		}
	}
}

func TestNamespaceAdmitsTheAgent(t *testing.T) {
	ns := baseObjects(t)["Namespace"].(*corev1.Namespace)
	if ns.Name != namespace {
		t.Fatalf("namespace %q", ns.Name)
	}
	// hostPID, hostPath and added capabilities need the privileged Pod
	// Security Standard.
	if got := ns.Labels["pod-security.kubernetes.io/enforce"]; got != "privileged" {
		t.Errorf("pod-security.kubernetes.io/enforce=%q, want privileged", got)
	}
}

func TestDaemonSet(t *testing.T) {
	objs := baseObjects(t)
	ds := objs["DaemonSet"].(*appsv1.DaemonSet)
	sa := objs["ServiceAccount"].(*corev1.ServiceAccount)
	pod := ds.Spec.Template.Spec

	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("selector %v does not match the pod labels %v (%v)", ds.Spec.Selector, ds.Spec.Template.Labels, err)
	}
	if !pod.HostPID {
		t.Error("hostPID must be true: the agent reads /proc of every process on the node")
	}
	if pod.HostNetwork || pod.HostIPC {
		t.Errorf("hostNetwork=%v hostIPC=%v: not needed", pod.HostNetwork, pod.HostIPC)
	}
	if pod.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", pod.PriorityClassName)
	}
	tolerateAll := false
	for _, tol := range pod.Tolerations {
		tolerateAll = tolerateAll || (tol.Key == "" && tol.Operator == corev1.TolerationOpExists && tol.Effect == "")
	}
	if !tolerateAll {
		t.Errorf("tolerations %v: want {operator: Exists} to run on every node", pod.Tolerations)
	}
	if pod.ServiceAccountName != sa.Name {
		t.Errorf("serviceAccountName %q, ServiceAccount %q", pod.ServiceAccountName, sa.Name)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken || sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Error("the agent never calls the API server: no service account token should be mounted")
	}

	if len(pod.Containers) != 1 || len(pod.InitContainers) != 0 {
		t.Fatalf("%d containers, %d init containers; want one agent container", len(pod.Containers), len(pod.InitContainers))
	}
	c := pod.Containers[0]
	args := strings.Join(append(append([]string{}, c.Command...), c.Args...), " ")
	if !strings.HasPrefix(args, "/usr/local/bin/ghostconn agent ") {
		t.Errorf("command %q: want /usr/local/bin/ghostconn agent", args)
	}
	flag := func(name string) string {
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
				return v
			}
		}
		return ""
	}
	if flag("metrics-address") != ":9977" {
		t.Errorf("--metrics-address=%q, want :9977", flag("metrics-address"))
	}

	// The metrics port, and the probes on it.
	if len(c.Ports) != 1 || c.Ports[0].Name != "metrics" || c.Ports[0].ContainerPort != 9977 || c.Ports[0].Protocol != corev1.ProtocolTCP || c.Ports[0].HostPort != 0 {
		t.Errorf("ports %+v: want metrics 9977/TCP, no hostPort", c.Ports)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}, {"startup", c.StartupProbe, "/healthz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s probe: want an HTTP GET of %s", p.name, p.path)
			continue
		}
		if g := p.probe.HTTPGet; g.Path != p.path || g.Port.String() != "metrics" {
			t.Errorf("%s probe: GET %s on port %s, want %s on port metrics", p.name, g.Path, g.Port.String(), p.path)
		}
	}

	// Resources: requests set, a memory limit, no CPU limit.
	req, lim := c.Resources.Requests, c.Resources.Limits
	if q := req[corev1.ResourceCPU]; q.Cmp(resource.MustParse("20m")) != 0 {
		t.Errorf("cpu request %s, want 20m", q.String())
	}
	if q := req[corev1.ResourceMemory]; q.Cmp(resource.MustParse("64Mi")) != 0 {
		t.Errorf("memory request %s, want 64Mi", q.String())
	}
	memLimit, ok := lim[corev1.ResourceMemory]
	// 547 MiB peak RSS at 100k connections (bench/RESULTS.md).
	if !ok || memLimit.Cmp(resource.MustParse("600Mi")) < 0 {
		t.Errorf("memory limit %s: want one above the measured peak (547 MiB at 100k connections)", memLimit.String())
	}
	if _, ok := lim[corev1.ResourceCPU]; ok {
		t.Error("no CPU limit: throttling the ring-buffer reader loses events")
	}

	// Security context: not privileged, exactly the six capabilities.
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("no securityContext.capabilities")
	}
	if sc.Privileged == nil || *sc.Privileged {
		t.Error("privileged must be set to false")
	}
	var add []string
	for _, cp := range sc.Capabilities.Add {
		add = append(add, string(cp))
	}
	if want := requiredCaps(); !sameSet(add, want) {
		t.Errorf("capabilities.add %v, want exactly %v (bpf.RequiredCaps and bpf.ActionCaps)", add, want)
	}
	if len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("capabilities.drop %v, want [ALL]", sc.Capabilities.Drop)
	}
	// The API server refuses allowPrivilegeEscalation: false next to a
	// capability spelled CAP_SYS_ADMIN.
	for _, cp := range add {
		if strings.HasPrefix(cp, "CAP_") {
			t.Errorf("capability %q: Kubernetes spells capabilities without CAP_", cp)
		}
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation: want false (no_new_privs; root keeps its capabilities at exec)")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem: want true")
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Error("runAsUser: want 0 (the pin directory must be owned by the agent's uid; capabilities of the host user namespace)")
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("seccompProfile %v, want RuntimeDefault", sc.SeccompProfile)
	}
	if sc.AppArmorProfile == nil || sc.AppArmorProfile.Type != corev1.AppArmorProfileTypeUnconfined {
		t.Errorf("appArmorProfile %v, want Unconfined (the default profile denies mount, writes to /sys/fs/bpf and ptrace-read of host processes)", sc.AppArmorProfile)
	}

	// Volumes: every mount has a volume, every volume is mounted.
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		if _, ok := vols[m.Name]; !ok {
			t.Errorf("volumeMount %s has no volume", m.Name)
		}
		mounts[m.MountPath] = m
	}
	if len(mounts) != len(vols) {
		t.Errorf("%d volumes, %d mounts", len(vols), len(mounts))
	}
	for _, want := range []struct {
		path     string
		readOnly bool
		hostType corev1.HostPathType
	}{
		{"/sys/fs/bpf", false, corev1.HostPathDirectory},
		{"/sys/kernel/tracing", true, corev1.HostPathDirectory},
		{"/sys/kernel/btf", true, corev1.HostPathDirectory},
		{"/boot", true, corev1.HostPathDirectory},
		{"/run/ghostconn", false, corev1.HostPathDirectoryOrCreate},
	} {
		m, ok := mounts[want.path]
		if !ok {
			t.Errorf("no mount at %s", want.path)
			continue
		}
		hp := vols[m.Name].HostPath
		if hp == nil || hp.Path != want.path || hp.Type == nil || *hp.Type != want.hostType {
			t.Errorf("%s: volume %+v, want hostPath %s type %s", want.path, vols[m.Name], want.path, want.hostType)
		}
		if m.ReadOnly != want.readOnly {
			t.Errorf("%s: readOnly=%v, want %v", want.path, m.ReadOnly, want.readOnly)
		}
		// Bidirectional needs privileged: true; the host mounts bpffs.
		if m.MountPropagation != nil && *m.MountPropagation != corev1.MountPropagationNone {
			t.Errorf("%s: mountPropagation %s, want none", want.path, *m.MountPropagation)
		}
	}
	for path := range mounts {
		if path == "/proc" || strings.HasPrefix(path, "/host") {
			t.Errorf("mount %s: with hostPID the agent reads the host's /proc as its own", path)
		}
	}
	// The flags point into those mounts.
	if sock := flag("api-socket"); filepath.Dir(sock) != "/run/ghostconn" || sock != exporter.DefaultAPISocket {
		t.Errorf("--api-socket=%q: want %s, on the host path /run/ghostconn", sock, exporter.DefaultAPISocket)
	}
	if pin := flag("pin-dir"); filepath.Dir(pin) != "/sys/fs/bpf" {
		t.Errorf("--pin-dir=%q: want a directory in the host's bpffs", pin)
	}
}

func TestService(t *testing.T) {
	objs := baseObjects(t)
	svc := objs["Service"].(*corev1.Service)
	ds := objs["DaemonSet"].(*appsv1.DaemonSet)
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("clusterIP %q: want a headless Service (every agent is scraped on its own)", svc.Spec.ClusterIP)
	}
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(ds.Spec.Template.Labels)) || len(svc.Spec.Selector) == 0 {
		t.Errorf("selector %v does not select the agent pods %v", svc.Spec.Selector, ds.Spec.Template.Labels)
	}
	if len(svc.Spec.Ports) != 1 {
		t.Fatalf("ports %+v", svc.Spec.Ports)
	}
	p := svc.Spec.Ports[0]
	if p.Name != "metrics" || p.Port != 9977 || p.TargetPort.String() != ds.Spec.Template.Spec.Containers[0].Ports[0].Name {
		t.Errorf("port %+v: want metrics 9977 -> the container's metrics port", p)
	}
}

func TestServiceMonitor(t *testing.T) {
	objs := baseObjects(t)
	svc := objs["Service"].(*corev1.Service)
	_, comp := loadKustomization(t, operatorDir)
	sm := comp["serviceMonitor"].(*serviceMonitor)
	if sm.Namespace != namespace || !slices.Contains(sm.Spec.NamespaceSelector.MatchNames, namespace) {
		t.Errorf("ServiceMonitor in %q selecting namespaces %v", sm.Namespace, sm.Spec.NamespaceSelector.MatchNames)
	}
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(svc.Labels)) {
		t.Errorf("selector %v does not select the Service (labels %v): %v", sm.Spec.Selector, svc.Labels, err)
	}
	// The alerts and the dashboard expect job="ghostconn".
	if job := svc.Labels[sm.Spec.JobLabel]; job != "ghostconn" {
		t.Errorf("jobLabel %q gives job=%q, want ghostconn", sm.Spec.JobLabel, job)
	}
	if len(sm.Spec.Endpoints) != 1 {
		t.Fatalf("endpoints %+v", sm.Spec.Endpoints)
	}
	ep := sm.Spec.Endpoints[0]
	if ep.Port != svc.Spec.Ports[0].Name || ep.Path != "/metrics" {
		t.Errorf("endpoint port %q path %q: want the Service's %q, /metrics", ep.Port, ep.Path, svc.Spec.Ports[0].Name)
	}
	nodeAsInstance := false
	for _, r := range ep.Relabelings {
		nodeAsInstance = nodeAsInstance || (r.TargetLabel == "instance" && slices.Equal(r.SourceLabels, []string{"__meta_kubernetes_pod_node_name"}))
	}
	if !nodeAsInstance {
		t.Error("instance should be the node's name, where the alerts' runbooks say to run ghostconn ls")
	}
}

// prometheusRuleYAML is prometheusrule.yaml as generated from the rules
// file: a header, then the file's groups under spec.
func prometheusRuleYAML(t *testing.T, rules []byte) []byte {
	t.Helper()
	i := bytes.Index(rules, []byte("\ngroups:\n"))
	if i < 0 {
		t.Fatal("ghostconn.rules.yml: no top-level groups:")
	}
	var b bytes.Buffer
	b.WriteString(`# The rules of deploy/prometheus/ghostconn.rules.yml for the Prometheus
# operator. Generated from that file (deploy/manifests_test.go fails when the
# two differ): edit the rules file, then regenerate with
#   go test ./deploy -run TestPrometheusRuleMatchesRulesFile -update
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: ghostconn
  namespace: ghostconn
  labels:
    app.kubernetes.io/name: ghostconn
spec:
`)
	for _, line := range strings.SplitAfter(string(rules[i+1:]), "\n") {
		if strings.TrimSpace(line) != "" {
			b.WriteString("  ")
		} else {
			line = strings.TrimLeft(line, " \t")
		}
		b.WriteString(line)
	}
	return b.Bytes()
}

func TestPrometheusRuleMatchesRulesFile(t *testing.T) {
	rulesData := readFile(t, rulesPath)
	path := filepath.Join(operatorDir, "prometheusrule.yaml")
	want := prometheusRuleYAML(t, rulesData)
	if *update {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got := readFile(t, path); !bytes.Equal(got, want) {
		t.Fatalf("%s is stale: run go test ./deploy -run TestPrometheusRuleMatchesRulesFile -update", path)
	}
	// And the same rules, decoded.
	var pr prometheusRule
	decodeStrict(t, path, want, &pr)
	rf := loadRules(t)
	if !reflect.DeepEqual(pr.Spec, rf) {
		t.Errorf("PrometheusRule spec differs from %s", rulesPath)
	}
}

// TestKustomizeBuild builds the base, and the base with the operator
// component, with kubectl's kustomize, and decodes every object strictly.
func TestKustomizeBuild(t *testing.T) {
	// kubectl comes with the machine image; Debian's kubernetes-client
	// (1.20) is too old for kustomize components.
	kubectl := optionalTool(t, "kubectl", "kubectl >= 1.21 with its built-in kustomize; not in Debian's archive")
	abs, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	overlay := t.TempDir()
	rel, err := filepath.Rel(overlay, abs)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), fmt.Appendf(nil, `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - %s/kubernetes
components:
  - %s/kubernetes/prometheus-operator
images:
  - name: ghostconn
    newName: registry.example/ghostconn
    newTag: v1.2.3
`, rel, rel), 0o644)
	for _, tc := range []struct {
		dir   string
		kinds []string
		image string
	}{
		{k8sDir, []string{"Namespace", "ServiceAccount", "Service", "DaemonSet"}, "ghostconn:latest"},
		{overlay, []string{"Namespace", "ServiceAccount", "Service", "DaemonSet", "PrometheusRule", "ServiceMonitor"}, "registry.example/ghostconn:v1.2.3"},
	} {
		out := run(t, "", kubectl, "kustomize", tc.dir)
		var kinds []string
		for i, doc := range strings.Split(out, "\n---\n") {
			obj := decodeObject(t, fmt.Sprintf("kustomize %s, object %d", tc.dir, i), []byte(doc))
			kind := reflect.TypeOf(obj).Elem().Name()
			if kind == "serviceMonitor" || kind == "prometheusRule" {
				kind = strings.ToUpper(kind[:1]) + kind[1:]
			}
			kinds = append(kinds, kind)
			meta := reflect.ValueOf(obj).Elem().FieldByName("ObjectMeta").Interface().(metav1.ObjectMeta)
			if kind != "Namespace" && meta.Namespace != namespace {
				t.Errorf("kustomize %s: %s in namespace %q", tc.dir, kind, meta.Namespace)
			}
			if ds, ok := obj.(*appsv1.DaemonSet); ok {
				if img := ds.Spec.Template.Spec.Containers[0].Image; img != tc.image {
					t.Errorf("kustomize %s: image %q, want %q", tc.dir, img, tc.image)
				}
			}
		}
		if !sameSet(kinds, tc.kinds) {
			t.Errorf("kustomize %s: kinds %v, want %v", tc.dir, kinds, tc.kinds)
		}
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
