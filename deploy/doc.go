// Package deploy holds no code: it ships the systemd units, the Prometheus
// configuration and alert rules (prometheus/) and the Grafana dashboard
// (grafana/), and its tests check them with the tools that read them.
package deploy
