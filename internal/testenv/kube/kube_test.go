package kube

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/oom-guard/oom-guard/internal/testenv"
)

// The harness's own test: a cluster comes up, runs a pod on the pod
// network that reaches the API server at its in-cluster address, and on
// Stop leaves nothing on the host.
func TestClusterRunsAPodAndLeavesNothing(t *testing.T) {
	testenv.RequireV1(t)
	// What a crashed run left is not what the host was: clear it first.
	lock, err := lockMachine()
	if err != nil {
		t.Fatal(err)
	}
	if err := removeLeftovers(stateDir()); err != nil {
		t.Fatal(err)
	}
	lock.Close()
	before := hostState(t)
	c, err := Start(Options{Log: t.Logf})
	if errors.Is(err, ErrMissing) {
		testenv.Skip(t, err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = c.Stop()
		}
	})
	t.Logf("cluster up in %v", c.StartupTime)

	client, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// wget to the in-cluster address: TLS is not checked by busybox, but a
	// reply at all proves the Service address reaches the API server.
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "harness-check", Namespace: "default"},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "check", Image: BusyboxImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sh", "-c", "wget -q -O - --no-check-certificate https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version"},
			}},
		},
	}
	if _, err := client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for {
		p, err := client.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Status.Phase == corev1.PodSucceeded {
			break
		}
		if p.Status.Phase == corev1.PodFailed || ctx.Err() != nil {
			logs, _ := c.Kubectl(context.Background(), nil, "logs", pod.Name)
			t.Fatalf("pod %s: %+v\nlogs: %s\nkubelet: %s", p.Status.Phase, p.Status, logs, c.DaemonLog("kubelet"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	logs, err := c.Kubectl(ctx, nil, "logs", pod.Name)
	if err != nil || !strings.Contains(logs, Version) {
		t.Errorf("the pod's request to the API server at its Service address: %q, %v", logs, err)
	}

	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped = true
	if after := hostState(t); after != before {
		t.Errorf("the host changed:\nbefore: %s\nafter:  %s", before, after)
	}
}

// hostState is what the cluster must leave as it found it.
func hostState(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, name := range kubeletSysctls {
		v, _ := os.ReadFile(filepath.Join("/proc/sys", name))
		b.WriteString(name + "=" + strings.TrimSpace(string(v)) + " ")
	}
	for _, p := range append([]string{PodCgroupRoot, stateDir(), netNSPath, shimSocketDir}, hostDirs...) {
		if _, err := os.Stat(p); err == nil {
			b.WriteString("exists:" + p + " ")
		}
	}
	mounts, err := mountsUnder(stateDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		b.WriteString("mount:" + m + " ")
	}
	if n := len(netNSProcesses()); n > 0 {
		b.WriteString("processes in the namespace ")
	}
	return b.String()
}
