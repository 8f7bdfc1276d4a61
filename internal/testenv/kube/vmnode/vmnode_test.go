package vmnode_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/oom-guard/oom-guard/internal/testenv/kube"
	"github.com/oom-guard/oom-guard/internal/testenv/kube/vmnode"
)

func TestMain(m *testing.M) {
	code := m.Run()
	vmnode.Cleanup()
	kube.Cleanup()
	os.Exit(code)
}

// The harness's own test: the VM's kubelet joins the host's control
// plane, becomes Ready and runs a pod in a cgroup v2 pod cgroup that
// reaches the API server at the Service address.
func TestNodeInVM(t *testing.T) {
	vmnode.Run(t, ".", vmnode.Options{Run: "^TestGuestNode", Timeout: 12 * time.Minute})
}

func TestGuestNodeRunsAPod(t *testing.T) {
	n := vmnode.Require(t)
	t.Log(n.Timing)
	client, err := n.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "vmnode-check", Namespace: "default"},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "check", Image: kube.BusyboxImage, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sh", "-c", "cat /proc/self/cgroup; wget -q -O - --no-check-certificate https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version"},
			}},
		},
	}
	t0 := time.Now()
	created, err := client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
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
			logs, _ := n.Kubectl(context.Background(), nil, "logs", pod.Name)
			t.Fatalf("pod %s: %+v\nlogs: %s\nkubelet: %s\ncontainerd: %s", p.Status.Phase, p.Status, logs, n.DaemonLog("kubelet"), n.DaemonLog("containerd"))
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("pod created to Succeeded: %v", time.Since(t0).Round(100*time.Millisecond))
	logs, err := n.Kubectl(ctx, nil, "logs", pod.Name)
	t.Logf("logs: %s", logs)
	// 0::/ : a v2 runtime gives the container a cgroup namespace of its own.
	if err != nil || !strings.Contains(logs, kube.Version) || !strings.Contains(logs, "0::/\n") {
		t.Errorf("want the pod on cgroup v2 and the API server's version from the Service address: %q, %v", logs, err)
	}
	// The kubelet's QoS tree, with the memory controller for the pods (a
	// pod's own cgroup goes when it has completed).
	if b, err := os.ReadFile(filepath.Join(vmnode.PodCgroupRoot, "besteffort", "cgroup.subtree_control")); err != nil || !strings.Contains(string(b), "memory") {
		t.Errorf("%s/besteffort/cgroup.subtree_control: %q, %v; want memory", vmnode.PodCgroupRoot, b, err)
	}
	t.Logf("pod %s ran on %s", created.UID, created.Spec.NodeName)
	_ = client.CoreV1().Pods("default").Delete(ctx, pod.Name, metav1.DeleteOptions{})
}
