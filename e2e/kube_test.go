// Package e2e holds the end-to-end tests that need a whole system: here,
// oom-guard installed with deploy/oom-guard.yaml on a real single-node
// Kubernetes cluster (internal/testenv/kube), as a user installs it.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/report"
	"github.com/oom-guard/oom-guard/internal/testenv/kube"
)

func TestMain(m *testing.M) {
	code := m.Run()
	kube.Cleanup()
	os.Exit(code)
}

// guardImage is the name the test imports the locally built image under,
// in place of the manifest's.
const guardImage = "docker.io/library/oom-guard:e2e"

// Children that wait for /tmp/go (so that the guard watches before they
// start), then grow past the container's 64 MiB limit, while the shell,
// the container's PID 1, stays.
const (
	// Seed 003: one 200 MiB block, allocated and touched at once.
	seed003Script = `while [ ! -e /tmp/go ]; do sleep 0.05; done; dd if=/dev/zero of=/dev/null bs=200M count=1; sleep 3600`
	// A leak: 1 MiB more, again and again, until something kills it.
	leakScript = `while [ ! -e /tmp/go ]; do sleep 0.05; done; awk 'BEGIN { while (1) a[i++] = sprintf("%1048576s", "") }'; sleep 3600`
)

// env is the installed guard and what the subtests share.
type env struct {
	cluster  *kube.Cluster
	client   *kubernetes.Clientset
	manifest []byte
}

// Install oom-guard from deploy/oom-guard.yaml, watch it report on the pods
// and kill before the kernel, check its RBAC, and uninstall it.
func TestKubernetesInstallReportUninstall(t *testing.T) {
	start := time.Now()
	c := kube.Require(t)
	t.Logf("cluster up in %v", c.StartupTime.Round(100*time.Millisecond))
	client, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	e := &env{cluster: c, client: client}
	e.importGuardImage(t)
	e.manifest = e.testManifest(t)
	e.install(t)
	t.Logf("installed and guarding %v after the test's start", time.Since(start).Round(100*time.Millisecond))

	t.Run("Seed003ChildOOMOnThePod", e.testSeed003)
	t.Run("GuardKillsBeforeTheKernel", e.testGuardKillsFirst)
	t.Run("ServiceAccountHasOnlyTheClusterRole", e.testRBAC)
	t.Run("GuardFitsItsMemoryLimit", e.testFootprint)
	t.Run("UninstallLeavesNothing", e.testUninstall)
	t.Logf("whole test: %v", time.Since(start).Round(100*time.Millisecond))
}

// importGuardImage builds the binary and its image as scripts/image does
// and imports it into the cluster's containerd.
func (e *env) importGuardImage(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "oom-guard")
	if err := kube.BuildStatic(ctx, "github.com/oom-guard/oom-guard/cmd/oom-guard", bin); err != nil {
		t.Fatal(err)
	}
	img, err := kube.GuardImage(bin, guardImage)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.cluster.ImportImage(ctx, img); err != nil {
		t.Fatal(err)
	}
}

// testManifest is deploy/oom-guard.yaml with two things changed for this
// machine: the image (the one just imported) and the directory of the CRI
// socket (the harness's own containerd, mounted where a node's is).
func (e *env) testManifest(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("../deploy/oom-guard.yaml")
	if err != nil {
		t.Fatal(err)
	}
	image := regexp.MustCompile(`(?m)^(\s+image:\s*).*$`)
	if n := len(image.FindAll(b, -1)); n != 1 {
		t.Fatalf("deploy/oom-guard.yaml has %d image lines, want 1", n)
	}
	b = image.ReplaceAll(b, []byte("${1}"+guardImage))
	socketDir := regexp.MustCompile(`(?m)^(\s+path:\s*)/run/containerd\s*$`)
	if n := len(socketDir.FindAll(b, -1)); n != 1 {
		t.Fatalf("deploy/oom-guard.yaml mounts /run/containerd %d times, want 1", n)
	}
	return socketDir.ReplaceAll(b, []byte("${1}"+e.cluster.CRISocketDir()))
}

// install applies the manifest and waits until the DaemonSet is ready and
// the guard says it is guarding.
func (e *env) install(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := e.cluster.Kubectl(ctx, e.manifest, "apply", "-f", "-")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl apply:\n%s", strings.TrimSpace(out))
	t.Cleanup(func() {
		// A failed test leaves no guard behind either (the cluster goes
		// with the test binary, but it may be shared).
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, _ = e.cluster.Kubectl(ctx, e.manifest, "delete", "--ignore-not-found", "-f", "-")
	})
	err = poll(ctx, func() error {
		ds, err := e.client.AppsV1().DaemonSets("kube-system").Get(ctx, "oom-guard", metav1.GetOptions{})
		if err != nil {
			return err
		}
		st := ds.Status
		if st.DesiredNumberScheduled != 1 || st.NumberReady != 1 || st.UpdatedNumberScheduled != 1 {
			return fmt.Errorf("daemonset status %+v", st)
		}
		// The seed's own commands: the DaemonSet's status, the guard's log.
		out, err := e.cluster.Kubectl(ctx, nil, "-n", "kube-system", "get", "ds", "oom-guard")
		if err != nil {
			return err
		}
		if f := strings.Fields(lastLine(out)); len(f) < 6 || f[3] != "1" || f[5] != "1" {
			return fmt.Errorf("kubectl get ds: READY and AVAILABLE are not 1:\n%s", out)
		}
		pods, err := e.client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app=oom-guard"})
		if err != nil || len(pods.Items) != 1 {
			return fmt.Errorf("guard pods: %v", err)
		}
		logs, err := e.cluster.Kubectl(ctx, nil, "-n", "kube-system", "logs", pods.Items[0].Name, "oomguard")
		if err != nil {
			return err
		}
		if !strings.Contains(logs, "guarding ") {
			return fmt.Errorf("the guard has not said it is guarding; its log:\n%s", logs)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("oom-guard not ready: %v\nkubelet: %s", err, e.cluster.DaemonLog("kubelet"))
	}
}

// testSeed003: a shell as PID 1 whose child exceeds the limit. The child
// dies (the guard kills it first, or the kernel does and the guard reports
// it); the Event on the pod names the container and the child; the pod
// runs on, never restarted.
func (e *env) testSeed003(t *testing.T) {
	pod := e.startPod(t, "seed003", seed003Script)
	ev := e.waitPodEvent(t, pod, "dd", event.KillProcess, event.ChildOOM)
	t.Logf("event %s: %s", ev.Reason, ev.Message)
	e.checkStillRunning(t, pod)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := e.cluster.Kubectl(ctx, nil, "describe", "pod", pod.Name)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, ev.Reason) || !strings.Contains(out, "oom-guard") {
		t.Errorf("kubectl describe pod does not show the %s event:\n%s", ev.Reason, out)
	}
	// The seed's way: kubectl get events | grep REASON.
	if out, err = e.cluster.Kubectl(ctx, nil, "get", "events"); err != nil || !strings.Contains(out, ev.Reason) {
		t.Errorf("kubectl get events does not list the %s event (%v):\n%s", ev.Reason, err, out)
	}
}

// testGuardKillsFirst: a leak in a child of the container's shell. The
// guard kills it at the threshold, reports that on the pod, and the kernel
// never OOM-kills in the pod.
func (e *env) testGuardKillsFirst(t *testing.T) {
	pod := e.startPod(t, "leak", leakScript)
	ev := e.waitPodEvent(t, pod, "awk", event.KillProcess)
	t.Logf("event %s: %s", ev.Reason, ev.Message)
	if !strings.Contains(ev.Message, "policy process") || !strings.Contains(ev.Message, "of limit 64.0MiB") {
		t.Errorf("message %q: want the usage against the limit and the policy", ev.Message)
	}
	podCgroup, ctrCgroup := podCgroups(t, pod)
	for _, cg := range []string{podCgroup, ctrCgroup} {
		if n := kernelOOMKills(t, cg); n != 0 {
			t.Errorf("the kernel OOM-killed %d process(es) in %s", n, cg)
		}
	}
	e.checkStillRunning(t, pod)
}

// testRBAC: with a token of the guard's ServiceAccount, writing Events
// works and nothing else does.
func (e *env) testRBAC(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tok, err := e.client.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "oomguard",
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(600))}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sa, err := kubernetes.NewForConfig(e.cluster.ConfigFor(tok.Status.Token))
	if err != nil {
		t.Fatal(err)
	}
	probe := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: "rbac-probe.", Namespace: "default"},
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: kube.NodeName, UID: kube.NodeName},
		Reason:         "RBACProbe", Message: "the e2e test checks the guard may write Events", Type: corev1.EventTypeNormal,
		Source: corev1.EventSource{Component: "oom-guard-e2e"},
	}
	created, err := sa.CoreV1().Events("default").Create(ctx, probe, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating an Event as the guard: %v", err)
	}
	defer func() {
		_ = e.client.CoreV1().Events("default").Delete(context.Background(), created.Name, metav1.DeleteOptions{})
	}()
	if _, err := sa.CoreV1().Events("default").Patch(ctx, created.Name, "application/strategic-merge-patch+json",
		[]byte(`{"count":2}`), metav1.PatchOptions{}); err != nil {
		t.Errorf("patching an Event as the guard: %v", err)
	}
	for what, call := range map[string]func() error{
		"get a secret": func() error {
			_, err := sa.CoreV1().Secrets("kube-system").Get(ctx, "any", metav1.GetOptions{})
			return err
		},
		"list secrets":    func() error { _, err := sa.CoreV1().Secrets("").List(ctx, metav1.ListOptions{}); return err },
		"list pods":       func() error { _, err := sa.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); return err },
		"list events":     func() error { _, err := sa.CoreV1().Events("").List(ctx, metav1.ListOptions{}); return err },
		"delete an event": func() error { return sa.CoreV1().Events("default").Delete(ctx, created.Name, metav1.DeleteOptions{}) },
	} {
		if err := call(); !apierrors.IsForbidden(err) {
			t.Errorf("%s as the guard: %v, want Forbidden", what, err)
		}
	}
	// Everything it may do, as the API server sums it up: the ClusterRole's
	// rule and what every authenticated user has (self-reviews).
	review, err := sa.AuthorizationV1().SelfSubjectRulesReviews().Create(ctx,
		&authorizationv1.SelfSubjectRulesReview{Spec: authorizationv1.SelfSubjectRulesReviewSpec{Namespace: "default"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var granted []string
	for _, r := range review.Status.ResourceRules {
		for _, res := range r.Resources {
			if strings.HasPrefix(res, "selfsubject") {
				continue // system:basic-user's, every user has it
			}
			for _, v := range r.Verbs {
				granted = append(granted, fmt.Sprintf("%v/%s:%s", r.APIGroups, res, v))
			}
		}
	}
	slices.Sort(granted)
	if want := []string{"[]/events:create", "[]/events:patch", "[]/events:update"}; !slices.Equal(granted, want) {
		t.Errorf("the guard may %v, want exactly %v", granted, want)
	}
}

// testUninstall: kubectl delete removes the guard, and it leaves nothing
// on the node: no process, no pod cgroup, no frozen cgroup, no soft limit
// set, none of its API objects.
func (e *env) testUninstall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pods, err := e.client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app=oom-guard"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("guard pods: %v, %v", pods, err)
	}
	guardUID := string(pods.Items[0].UID)
	if cgs := podCgroupDirs(guardUID); len(cgs) == 1 {
		if b, err := os.ReadFile(filepath.Join(cgs[0], "memory.max_usage_in_bytes")); err == nil {
			peak, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
			t.Logf("the guard pod's peak memory: %.1f MiB (limit 60 MiB)", float64(peak)/(1<<20))
		}
	}
	if _, err := e.cluster.Kubectl(ctx, e.manifest, "delete", "--wait=true", "--timeout=90s", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	err = poll(ctx, func() error {
		pods, err := e.client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app=oom-guard"})
		if err != nil {
			return err
		}
		if len(pods.Items) > 0 {
			return fmt.Errorf("%d guard pod(s) left", len(pods.Items))
		}
		if pids := processesNamed("oom-guard"); len(pids) > 0 {
			return fmt.Errorf("oom-guard processes still run: %v", pids)
		}
		if cgs := podCgroupDirs(guardUID); len(cgs) > 0 {
			return fmt.Errorf("the guard's pod cgroups are still there: %v", cgs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, get := range []func() error{
		func() error {
			_, err := e.client.CoreV1().ServiceAccounts("kube-system").Get(ctx, "oomguard", metav1.GetOptions{})
			return err
		},
		func() error {
			_, err := e.client.RbacV1().ClusterRoles().Get(ctx, "system:oomguard", metav1.GetOptions{})
			return err
		},
		func() error {
			_, err := e.client.RbacV1().ClusterRoleBindings().Get(ctx, "system:oomguard", metav1.GetOptions{})
			return err
		},
	} {
		if err := get(); !apierrors.IsNotFound(err) {
			t.Errorf("after kubectl delete: %v, want NotFound", err)
		}
	}
	checkCgroupsUntouched(t)
}

// testFootprint: after the pods above came and went, the guard's container
// runs with the manifest's memory limit (60Mi), was never OOM-killed nor
// restarted, and what the kernel charges its cgroup (its pages and the
// kernel memory of its eventfds, files and watches) is printed.
func (e *env) testFootprint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pods, err := e.client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app=oom-guard"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("guard pods: %v, %v", pods, err)
	}
	pod := pods.Items[0]
	var id string
	for _, st := range pod.Status.ContainerStatuses {
		if st.Name == "oomguard" {
			if st.RestartCount != 0 {
				t.Errorf("the guard's container restarted %d times (last state %+v)", st.RestartCount, st.LastTerminationState)
			}
			_, id, _ = strings.Cut(st.ContainerID, "://")
		}
	}
	cgs := podCgroupDirs(string(pod.UID))
	if id == "" || len(cgs) != 1 {
		t.Fatalf("the guard's container %q, pod cgroups %v", id, cgs)
	}
	dir := filepath.Join(cgs[0], id)
	read := func(file string) uint64 {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			t.Fatalf("%s/%s: %v", dir, file, err)
		}
		return v
	}
	mib := func(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	limit, usage, kmem, peak := read("memory.limit_in_bytes"), read("memory.usage_in_bytes"), read("memory.kmem.usage_in_bytes"), read("memory.max_usage_in_bytes")
	kills := kernelOOMKills(t, dir)
	t.Logf("the guard's container, at the end: memory usage %s (kernel memory %s), peak %s, limit %s, kernel OOM kills %d",
		mib(usage), mib(kmem), mib(peak), mib(limit), kills)
	if limit != 60<<20 {
		t.Errorf("the guard's container limit is %s, want the manifest's 60Mi", mib(limit))
	}
	if kills != 0 {
		t.Errorf("the kernel OOM-killed in the guard's container %d times", kills)
	}
}

// startPod runs script as a busybox pod's PID 1 with a 64 MiB limit, waits
// for it to run, and lets the child start. The pod is deleted at the end.
func (e *env) startPod(t *testing.T, name, script string) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	limit := resource.MustParse("64Mi")
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr(int64(1)),
			Containers: []corev1.Container{{
				Name: "app", Image: kube.BusyboxImage, ImagePullPolicy: corev1.PullNever,
				Command:   []string{"sh", "-c", script},
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: limit}},
			}},
		},
	}
	created, err := e.client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = e.client.CoreV1().Pods("default").Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))})
	})
	err = poll(ctx, func() error {
		p, err := e.client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("pod %s is %s", name, p.Status.Phase)
		}
		created = p
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.cluster.Kubectl(ctx, nil, "exec", name, "--", "touch", "/tmp/go"); err != nil {
		t.Fatal(err)
	}
	return created
}

// guardEventOn waits, until ctx ends, for the guard's Event on pod with one
// of the reasons; the error lists the pod's events seen meanwhile. Both the
// v1 and the v2 node's tests read their events through it.
func guardEventOn(ctx context.Context, client *kubernetes.Clientset, pod *corev1.Pod, reasons ...event.Reason) (*corev1.Event, error) {
	selector := fields.OneTermEqualSelector("involvedObject.uid", string(pod.UID)).String()
	var found *corev1.Event
	err := poll(ctx, func() error {
		list, err := client.CoreV1().Events(pod.Namespace).List(ctx, metav1.ListOptions{FieldSelector: selector})
		if err != nil {
			return err
		}
		var seen []string
		for i := range list.Items {
			ev := &list.Items[i]
			seen = append(seen, ev.Reason+": "+ev.Message)
			if ev.Source.Component == report.KubeComponent && slices.Contains(reasons, event.Reason(ev.Reason)) {
				found = ev
				return nil
			}
		}
		return fmt.Errorf("no %v event on pod %s; its events: %q", reasons, pod.Name, seen)
	})
	return found, err
}

// waitPodEvent waits for the guard's Event on the pod with one of the
// reasons, naming the container and the process comm, and checks what it
// carries: the container as sub-object, the source, the seed's JSON.
func (e *env) waitPodEvent(t *testing.T, pod *corev1.Pod, comm string, reasons ...event.Reason) *corev1.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	found, err := guardEventOn(ctx, e.client, pod, reasons...)
	if err != nil {
		logs, _ := e.cluster.Kubectl(context.Background(), nil, "-n", "kube-system", "logs", "ds/oom-guard")
		t.Fatalf("%v\nthe guard's CPU throttling: %s\nthe guard's log:\n%s", err, e.guardThrottling(), logs)
	}
	t.Logf("the guard's CPU throttling so far: %s", e.guardThrottling())
	if want := "spec.containers{app}"; found.InvolvedObject.FieldPath != want {
		t.Errorf("event's sub-object %q, want %q", found.InvolvedObject.FieldPath, want)
	}
	if !strings.Contains(found.Message, "container app") || !strings.Contains(found.Message, comm+" (pid ") {
		t.Errorf("message %q: want container app and the killed %s named", found.Message, comm)
	}
	if found.Source.Host != kube.NodeName || found.Type != corev1.EventTypeWarning {
		t.Errorf("event source %+v, type %s", found.Source, found.Type)
	}
	var seed map[string]any
	if err := json.Unmarshal([]byte(found.Annotations[report.KubeEventAnnotation]), &seed); err != nil {
		t.Fatalf("annotation %s: %v", report.KubeEventAnnotation, err)
	}
	for _, field := range []string{"hostname", "timestamp", "oomcgroup", "proccgroup", "threshold", "usage", "killed", "stats", "policy"} {
		if _, ok := seed[field]; !ok {
			t.Errorf("the seed's field %q is missing from the annotation: %v", field, seed)
		}
	}
	if killed, _ := seed["killed"].(string); !strings.Contains(killed, "("+comm+") ") || seed["hostname"] != kube.NodeName || seed["podName"] != pod.Name {
		t.Errorf("annotation %v", seed)
	}
	return found
}

// guardThrottling is the guard pod's cpu.stat: how often its CPU limit
// held it back (a guard held back loses races to the kernel).
func (e *env) guardThrottling() string {
	pods, err := e.client.CoreV1().Pods("kube-system").List(context.Background(), metav1.ListOptions{LabelSelector: "app=oom-guard"})
	if err != nil || len(pods.Items) != 1 {
		return fmt.Sprintf("no guard pod (%v)", err)
	}
	m, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/cpu/kubepods/*", "pod"+string(pods.Items[0].UID), "cpu.stat"))
	if len(m) == 0 {
		return "no cpu.stat"
	}
	b, _ := os.ReadFile(m[0])
	return strings.Join(strings.Fields(string(b)), " ")
}

// checkStillRunning: the pod runs, its container never restarted, and
// stays so for a moment (a kill of PID 1 would show by then).
func (e *env) checkStillRunning(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	time.Sleep(2 * time.Second)
	p, err := e.client.CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.Phase != corev1.PodRunning || len(p.Status.ContainerStatuses) != 1 ||
		p.Status.ContainerStatuses[0].RestartCount != 0 || p.Status.ContainerStatuses[0].State.Running == nil {
		t.Errorf("pod %s: phase %s, containers %+v; want Running with restartCount 0", p.Name, p.Status.Phase, p.Status.ContainerStatuses)
	}
}

// podCgroups are the pod's and its container's memory cgroups.
func podCgroups(t *testing.T, pod *corev1.Pod) (podCg, ctrCg string) {
	t.Helper()
	dirs := podCgroupDirs(string(pod.UID))
	if len(dirs) != 1 {
		t.Fatalf("pod %s has memory cgroups %v, want one", pod.Name, dirs)
	}
	if len(pod.Status.ContainerStatuses) != 1 {
		t.Fatalf("pod %s: %d container statuses", pod.Name, len(pod.Status.ContainerStatuses))
	}
	// containerd://<id>: the runtime's ID is the cgroup's name (cgroupfs).
	_, id, ok := strings.Cut(pod.Status.ContainerStatuses[0].ContainerID, "://")
	if !ok {
		t.Fatalf("pod %s: container ID %q", pod.Name, pod.Status.ContainerStatuses[0].ContainerID)
	}
	return dirs[0], filepath.Join(dirs[0], id)
}

// podCgroupDirs finds pod<uid> in any QoS class of the memory hierarchy.
func podCgroupDirs(uid string) []string {
	var dirs []string
	for _, pattern := range []string{"pod" + uid, "*/pod" + uid} {
		m, _ := filepath.Glob(filepath.Join(kube.PodCgroupRoot, pattern))
		dirs = append(dirs, m...)
	}
	return dirs
}

func kernelOOMKills(t *testing.T, cgroup string) uint64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cgroup, "memory.oom_control"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("%s/memory.oom_control has no oom_kill line", cgroup)
	return 0
}

// checkCgroupsUntouched: no cgroup of the cluster is left frozen or with a
// soft limit (the guard's container policy freezes; --openSoftLimit sets
// soft limits; both must be undone when it goes).
func checkCgroupsUntouched(t *testing.T) {
	t.Helper()
	_ = filepath.WalkDir(kube.PodCgroupRoot, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if b, err := os.ReadFile(filepath.Join(path, "memory.soft_limit_in_bytes")); err == nil {
			if v, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); v < 1<<62 {
				t.Errorf("%s: soft limit %d left set", path, v)
			}
		}
		rel := strings.TrimPrefix(path, "/sys/fs/cgroup/memory")
		if b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/freezer", rel, "freezer.state")); err == nil && strings.TrimSpace(string(b)) != "THAWED" {
			t.Errorf("%s: freezer state %s", rel, strings.TrimSpace(string(b)))
		}
		return nil
	})
}

// processesNamed lists the host's processes with that comm.
func processesNamed(comm string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm")); err == nil && strings.TrimSpace(string(b)) == comm {
			pids = append(pids, pid)
		}
	}
	return pids
}

// poll calls check every 200 ms until it returns nil or ctx ends; then
// the last error says why.
func poll(ctx context.Context, check func() error) error {
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func ptr[T any](v T) *T { return &v }

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
