// Package deploy holds ghostconn's deployment files: a systemd unit
// (systemd/), Kubernetes manifests (kubernetes/), Prometheus rules and an
// example configuration (prometheus/) and a Grafana dashboard (grafana/).
// It has no code of its own; its tests check those files, and run the agent
// and a real Prometheus server against them.
package deploy
