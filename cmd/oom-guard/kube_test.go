package main

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestKubeEventsFlag(t *testing.T) {
	if _, err := parseFlags([]string{"--kube-events=sometimes"}, io.Discard); !errors.As(err, new(errUsage)) || !strings.Contains(err.Error(), "--kube-events") {
		t.Errorf("--kube-events=sometimes: %v, want a usage error naming the flag", err)
	}
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.kubeEvents != "auto" || o.kubeconfig != "" {
		t.Errorf("defaults: --kube-events=%s --kubeconfig=%q", o.kubeEvents, o.kubeconfig)
	}
}

// With no cluster at all the guard runs as before: auto writes no Events
// and asks for nothing; on says why it cannot.
func TestKubeEventsWithoutACluster(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	o := &options{kubeEvents: "auto"}
	if k, err := newKubeEvents(o, nil); k != nil || err != nil {
		t.Errorf("auto without a cluster: %v, %v; want no sink and no error", k, err)
	}
	o.kubeconfig = filepath.Join(t.TempDir(), "missing")
	if k, err := newKubeEvents(o, nil); k != nil || err != nil {
		t.Errorf("auto with an unreadable kubeconfig: %v, %v; want no sink and no error", k, err)
	}
	o.kubeEvents = "on"
	if _, err := newKubeEvents(o, nil); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("on with an unreadable kubeconfig: %v, want an error naming it", err)
	}
	o.kubeEvents, o.kubeconfig = "off", ""
	t.Setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "443")
	if k, err := newKubeEvents(o, nil); k != nil || err != nil {
		t.Errorf("off in a pod: %v, %v", k, err)
	}
}

// A kubeconfig is read, and nothing is contacted until there is an Event:
// a server that does not exist delays nothing at start.
func TestKubeEventsFromKubeconfig(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	body := `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`
	if err := os.WriteFile(kc, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	k, err := newKubeEvents(&options{kubeEvents: "on", kubeconfig: kc}, nil)
	if err != nil || k == nil {
		t.Fatalf("on with a kubeconfig: %v, %v", k, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	k.Stop(ctx)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("start and stop took %v", d)
	}
}
