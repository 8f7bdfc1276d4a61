package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/report"
	"github.com/oom-guard/oom-guard/internal/testenv/kube"
	"github.com/oom-guard/oom-guard/internal/testenv/kube/vmnode"
	"github.com/oom-guard/oom-guard/internal/testenv/vm"
)

// The same end-to-end test on a real cgroup v2 node: the kubelet,
// containerd and runc in the VM (internal/testenv/kube/vmnode), joined to
// the control plane on this machine. The host half builds the guard's
// image and boots the node; everything else runs in the VM
// (TestV2Kube*), where the node's cgroups are.
func TestKubernetesV2Node(t *testing.T) {
	start := time.Now()
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
	manifest, err := os.ReadFile("../deploy/oom-guard.yaml")
	if err != nil {
		t.Fatal(err)
	}
	res := vmnode.Run(t, ".", vmnode.Options{
		Run: "^TestV2Kube", Images: []kube.Image{img}, Timeout: 25 * time.Minute,
		Files: map[string][]byte{"oom-guard.yaml": manifest},
	})
	if res != nil {
		if b, ok := res.Files[v2FiguresFile]; ok {
			t.Logf("measured on the v2 node:\n%s", strings.TrimSpace(string(b)))
		}
	}
	t.Logf("whole v2 test: %v", time.Since(start).Round(time.Second))
}

const v2FiguresFile = "v2-figures.txt"

// v2env is the installed guard on the v2 node and what the subtests share.
type v2env struct {
	node     *vmnode.Node
	client   *kubernetes.Clientset
	manifest []byte
	figures  []string
}

func (e *v2env) figure(t *testing.T, format string, args ...any) {
	t.Helper()
	line := fmt.Sprintf(format, args...)
	t.Log(line)
	e.figures = append(e.figures, line)
	_ = os.WriteFile(filepath.Join(vm.OutDir(), v2FiguresFile), []byte(strings.Join(e.figures, "\n")+"\n"), 0o644)
}

func TestV2KubeInstallReportUninstall(t *testing.T) {
	start := time.Now()
	n := vmnode.Require(t)
	client, err := n.Client()
	if err != nil {
		t.Fatal(err)
	}
	e := &v2env{node: n, client: client}
	e.figure(t, "%s", n.Timing)
	b, err := vmnode.File("oom-guard.yaml") // deploy/oom-guard.yaml, from the host
	if err != nil {
		t.Fatal(err)
	}
	// Only the image: the node's containerd socket is where the
	// manifest mounts it from, /run/containerd.
	image := regexp.MustCompile(`(?m)^(\s+image:\s*).*$`)
	if n := len(image.FindAll(b, -1)); n != 1 {
		t.Fatalf("deploy/oom-guard.yaml has %d image lines, want 1", n)
	}
	e.manifest = image.ReplaceAll(b, []byte("${1}"+guardImage))

	// A pod that lives through the guard's whole stay, to see that
	// nothing of its cgroups is left changed.
	bystander := e.startPod(t, "bystander", "sleep 3600", burstable("32Mi", "64Mi"), false)
	before := cgroupFiles(t, bystander)

	t0 := time.Now()
	e.install(t)
	e.figure(t, "guard installed and guarding %v after kubectl apply", time.Since(t0).Round(100*time.Millisecond))

	t.Run("GuardKillsBeforeTheKernel", e.testGuardKillsFirst)
	t.Run("Seed003OOMGroupKillsTheContainer", e.testSeed003Group)
	t.Run("GuaranteedPodLimitGuarded", e.testGuaranteed)
	t.Run("ResizeMovesTheThreshold", e.testResize)
	t.Run("Seed003SingleProcessOOMKill", e.testSeed003Single)
	// The kernel's own kills, which the guard above pre-empted every time:
	// the same DaemonSet re-applied with --policy=noop in the same run
	// (cheaper than a second node: one rolling update, one kubelet
	// restart).
	t.Run("NoopKernelKillsChildAlone", e.testNoopSingle)
	t.Run("NoopKernelKillsTheGroup", e.testNoopGroup)
	t.Run("UninstallLeavesNothing", func(t *testing.T) { e.testUninstall(t, bystander, before) })
	t.Run("MemoryQoSOwnsMemoryHigh", e.testMemoryQoS)
	e.figure(t, "whole test in the VM: %v (node start included)", time.Since(start).Round(time.Second))
}

// Resources of the test pods.
func burstable(request, limit string) corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(request)},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(limit)},
	}
}

func guaranteed(cpu, mem string) corev1.ResourceRequirements {
	l := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)}
	return corev1.ResourceRequirements{Requests: l, Limits: l}
}

func (e *v2env) install(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	out, err := e.node.Kubectl(ctx, e.manifest, "apply", "-f", "-")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl apply:\n%s", strings.TrimSpace(out))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_, _ = e.node.Kubectl(ctx, e.manifest, "delete", "--ignore-not-found", "-f", "-")
	})
	err = poll(ctx, func() error {
		ds, err := e.client.AppsV1().DaemonSets("kube-system").Get(ctx, "oom-guard", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if st := ds.Status; st.DesiredNumberScheduled != 1 || st.NumberReady != 1 {
			return fmt.Errorf("daemonset status %+v", st)
		}
		logs, err := e.node.Kubectl(ctx, nil, "-n", "kube-system", "logs", "ds/oom-guard", "oomguard")
		if err != nil {
			return err
		}
		if !strings.Contains(logs, "guarding ") {
			return fmt.Errorf("the guard has not said it is guarding; its log:\n%s", logs)
		}
		t.Logf("the guard's log:\n%s", logs)
		return nil
	})
	if err != nil {
		t.Fatalf("oom-guard not ready: %v\nkubelet: %s", err, e.node.DaemonLog("kubelet"))
	}
}

// testGuardKillsFirst: a leak in a child of the container's shell. The
// guard kills at the threshold, on the pod's Event, and the kernel never
// OOM-kills in the pod. The kubelet put memory.oom.group=1 on the
// container, so the guard kills all of it, as the kernel would: the
// container restarts.
func (e *v2env) testGuardKillsFirst(t *testing.T) {
	pod, podCg, ctrCg := e.startReleased(t, "leak", leakScript, "1")
	// memory.oom.group=1: the process policy kills all of the container,
	// and says so.
	ev := e.waitPodEvent(t, pod, "awk", event.KillContainer)
	t.Logf("event %s: %s", ev.Reason, ev.Message)
	if !strings.Contains(ev.Message, "killed the container") || !strings.Contains(ev.Message, "policy process") || strings.Contains(ev.Message, "policy container") ||
		!strings.Contains(ev.Message, "memory.oom.group is set on") || !strings.Contains(ev.Message, "so the process policy did too") || !strings.Contains(ev.Message, "of limit 64.0MiB") {
		t.Errorf("message %q: want the usage against the limit, the policy and why the whole container", ev.Message)
	}
	checkNoKernelKill(t, podCg, ctrCg)
	rc := e.waitRestart(t, pod, 1)
	e.figure(t, "leak (Burstable, 64Mi): %s at %s threshold, %d restart(s), memory.events oom_kill 0 in pod and container", ev.Reason, whichCgroup(ev, podCg), rc)
}

// testSeed003Group: the seed-003 pod under the kubelet's default
// memory.oom.group=1. Whoever kills dd kills the whole container: the
// kernel (one CgroupOOM naming it) or, as measured every time, the guard
// (dd's 200 MiB come in one read(2), but the tripwire throttles it in
// there: the kernel reclaims for memory.high inside the charge once the
// overage passes a batch, and the read stops at a pending SIGKILL). The
// container restarts; no ContainerChildOOMKilled (no child is left alive).
func (e *v2env) testSeed003Group(t *testing.T) {
	pod, _, _ := e.startReleased(t, "seed003-group", seed003Script, "1")
	ev := e.waitPodEvent(t, pod, "", event.CgroupOOM, event.KillProcess, event.KillContainer)
	t.Logf("event %s: %s", ev.Reason, ev.Message)
	rc := e.waitRestart(t, pod, 1)
	time.Sleep(3 * time.Second) // any second event would be there by now
	evs := e.podEvents(t, pod)
	if n := countReason(evs, event.Reason(ev.Reason)); n != 1 {
		t.Errorf("%d %s events on the pod, want one: %q", n, ev.Reason, evs)
	}
	if countReason(evs, event.ChildOOM) != 0 {
		t.Errorf("a %s event, but memory.oom.group killed the whole container: %q", event.ChildOOM, evs)
	}
	e.figure(t, "seed 003, memory.oom.group=1: %s (count %d), %d restart(s), no %s", ev.Reason, ev.Count, rc, event.ChildOOM)
}

// testSeed003Single: the kubelet restarted with singleProcessOOMKill:
// true leaves memory.oom.group at 0, and the kernel kills dd alone: the
// seed-003 situation of cgroup v1, reported as ContainerChildOOMKilled
// (or the guard killed dd first), the pod Running, never restarted.
func (e *v2env) testSeed003Single(t *testing.T) {
	d := e.node.RestartKubelet(t, vmnode.KubeletConfig{SingleProcessOOMKill: true})
	e.figure(t, "kubelet restarted with singleProcessOOMKill: true, node Ready again in %v", d.Round(100*time.Millisecond))
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		t.Logf("kubelet: %s", e.node.DaemonLog("kubelet"))
	})
	pod, _, _ := e.startReleased(t, "seed003-single", seed003Script, "0")
	ev := e.waitPodEvent(t, pod, "dd", event.ChildOOM, event.KillProcess)
	t.Logf("event %s: %s", ev.Reason, ev.Message)
	e.checkRunning(t, pod)
	e.figure(t, "seed 003, singleProcessOOMKill: %s on the pod, pod Running, restartCount 0", ev.Reason)
}

// noopManifest is the installed manifest with --policy=noop instead of
// its policy, and nothing else changed.
func (e *v2env) noopManifest(t *testing.T) []byte {
	t.Helper()
	policy := regexp.MustCompile(`(?m)^(\s+- --policy=).*$`)
	if n := len(policy.FindAll(e.manifest, -1)); n != 1 {
		t.Fatalf("deploy/oom-guard.yaml has %d --policy lines, want 1", n)
	}
	return policy.ReplaceAll(e.manifest, []byte("${1}noop"))
}

// applyNoop re-applies the DaemonSet with --policy=noop (a rolling update
// of its one pod) and waits until the new pod guards. The uninstall test
// deletes it like the first.
func (e *v2env) applyNoop(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	t0 := time.Now()
	if out, err := e.node.Kubectl(ctx, e.noopManifest(t), "apply", "-f", "-"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	err := poll(ctx, func() error {
		ds, err := e.client.AppsV1().DaemonSets("kube-system").Get(ctx, "oom-guard", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if st := ds.Status; st.ObservedGeneration < ds.Generation || st.UpdatedNumberScheduled != 1 || st.NumberReady != 1 || st.NumberAvailable != 1 {
			return fmt.Errorf("daemonset generation %d, status %+v", ds.Generation, st)
		}
		pods, err := e.client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app=oom-guard"})
		if err != nil {
			return err
		}
		if len(pods.Items) != 1 || pods.Items[0].DeletionTimestamp != nil {
			return fmt.Errorf("%d guard pods, the old one still going", len(pods.Items))
		}
		logs, err := e.node.Kubectl(ctx, nil, "-n", "kube-system", "logs", pods.Items[0].Name, "oomguard")
		if err != nil {
			return err
		}
		if !strings.Contains(logs, "policy noop)") {
			return fmt.Errorf("the noop guard has not said it is guarding; its log:\n%s", logs)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("noop guard not ready: %v", err)
	}
	e.figure(t, "DaemonSet re-applied with --policy=noop: the new pod guarding %v after kubectl apply", time.Since(t0).Round(100*time.Millisecond))
}

// logGuard logs the guard's log lines about the pod (its UID is in every
// cgroup path), to see the kernel's kill from the guard's side.
func (e *v2env) logGuard(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	logs, err := e.node.Kubectl(context.Background(), nil, "-n", "kube-system", "logs", "ds/oom-guard", "oomguard")
	if err != nil {
		t.Logf("the guard's log: %v", err)
		return
	}
	var about []string
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, string(pod.UID)) {
			about = append(about, line)
		}
	}
	t.Logf("the guard's log about pod %s:\n%s", pod.Name, strings.Join(about, "\n"))
	if t.Failed() {
		onNode, _ := e.node.Kubectl(context.Background(), nil, "get", "events", "-A", "--field-selector", "involvedObject.kind=Node")
		t.Logf("events on the node:\n%s", onNode)
	}
}

// testNoopSingle: under singleProcessOOMKill (the kubelet as the previous
// test left it) and the noop guard, the kernel itself kills dd alone: one
// ContainerChildOOMKilled on the pod naming it, no CgroupOOM, the pod
// Running, restartCount 0.
func (e *v2env) testNoopSingle(t *testing.T) {
	if !e.node.Config().SingleProcessOOMKill {
		t.Fatal("the kubelet is not under singleProcessOOMKill")
	}
	e.applyNoop(t)
	pod, podCg, ctrCg := e.startReleased(t, "seed003-noop-single", seed003Script, "0")
	defer e.logGuard(t, pod)
	ev := e.waitPodEvent(t, pod, "dd", event.ChildOOM)
	t.Logf("event %s: %s", ev.Reason, ev.Message)
	e.checkRunning(t, pod) // 3 s: any second event would be there by now
	evs := e.podEvents(t, pod)
	t.Logf("the guard's events on the pod: %q", evs)
	if n := countReason(evs, event.ChildOOM); n != 1 {
		t.Errorf("%d %s events, want one: %q", n, event.ChildOOM, evs)
	}
	if n := countReason(evs, event.CgroupOOM) + countReason(evs, event.KillProcess) + countReason(evs, event.KillContainer); n != 0 {
		t.Errorf("%d CgroupOOM or kill events besides, want none: %q", n, evs)
	}
	ce := v2Events(t, ctrCg)
	if ce["oom_kill"] < 1 || ce["oom_group_kill"] != 0 {
		t.Errorf("%s/memory.events %v: want the kernel's kill of one process, no group kill", ctrCg, ce)
	}
	e.figure(t, "noop, singleProcessOOMKill: the kernel killed dd alone (container memory.events oom_kill %d, oom_group_kill 0; pod oom %d): %d %s, %d %s on the pod, pod Running, restartCount 0",
		ce["oom_kill"], v2Events(t, podCg)["oom"], countReason(evs, event.ChildOOM), event.ChildOOM, countReason(evs, event.WouldKill), event.WouldKill)
}

// testNoopGroup: the kubelet back at its default memory.oom.group=1, the
// noop guard: the kernel kills the whole container (dd and its shell),
// reported as ONE CgroupOOM on the pod naming the container and both
// processes, however many threads the kernel counted; the container
// restarts; no ContainerChildOOMKilled.
func (e *v2env) testNoopGroup(t *testing.T) {
	d := e.node.RestartKubelet(t, vmnode.KubeletConfig{})
	e.figure(t, "kubelet restarted with its defaults (memory.oom.group=1), node Ready again in %v", d.Round(100*time.Millisecond))
	pod, podCg, ctrCg := e.startReleased(t, "seed003-noop-group", seed003Script, "1")
	defer e.logGuard(t, pod)
	ev := e.waitPodEvent(t, pod, "dd", event.CgroupOOM, event.ChildOOM)
	t.Logf("event %s: %s", ev.Reason, ev.Message)
	rc := e.waitRestart(t, pod, 1)
	time.Sleep(3 * time.Second) // any second event would be there by now
	evs := e.podEvents(t, pod)
	t.Logf("the guard's events on the pod: %q", evs)
	if n := countReason(evs, event.CgroupOOM); n != 1 {
		t.Errorf("%d %s events, want one for the one group kill: %q", n, event.CgroupOOM, evs)
	}
	if n := countReason(evs, event.ChildOOM); n != 0 {
		t.Errorf("%d %s events, but memory.oom.group killed the whole container: %q", n, event.ChildOOM, evs)
	}
	if !strings.Contains(ev.Message, "sh (pid ") || !strings.Contains(ev.Message, "memory.oom.group is set on "+ctrCg) {
		t.Errorf("message %q: want the shell named too, and the group", ev.Message)
	}
	pe := v2Events(t, podCg) // the container's cgroup went with the restart
	if pe["oom_group_kill"] != 1 || pe["oom_kill"] < 2 {
		t.Errorf("%s/memory.events %v: want one group kill of (at least) two", podCg, pe)
	}
	e.figure(t, "noop, memory.oom.group=1: the kernel killed the container whole (pod memory.events oom_group_kill %d, oom_kill %d): %d %s on the pod, %d %s, %d restart(s)",
		pe["oom_group_kill"], pe["oom_kill"], countReason(evs, event.CgroupOOM), event.CgroupOOM, countReason(evs, event.ChildOOM), event.ChildOOM, rc)
}

// testGuaranteed: a Guaranteed pod's limit is on its pod cgroup as well
// as on its container's; the guard guards both (its tripwire is on both)
// and kills a leak before the kernel does.
func (e *v2env) testGuaranteed(t *testing.T) {
	pod := e.startPod(t, "guaranteed", leakScript, guaranteed("100m", "64Mi"), false)
	podCg, ctrCg := v2Cgroups(t, pod)
	if filepath.Dir(podCg) != vmnode.PodCgroupRoot {
		t.Errorf("Guaranteed pod's cgroup %s, want it right under %s", podCg, vmnode.PodCgroupRoot)
	}
	thr := pageFloor(threshold(64 << 20))
	for _, cg := range []string{podCg, ctrCg} {
		if max := readTrim(t, cg, "memory.max"); max != strconv.Itoa(64<<20) {
			t.Errorf("%s/memory.max = %s, want 64Mi", cg, max)
		}
		if err := pollFor(10*time.Second, func() error { return wantFile(cg, "memory.high", strconv.FormatUint(thr, 10)) }); err != nil {
			t.Errorf("the guard's tripwire: %v", err)
		}
	}
	if _, err := e.node.Kubectl(context.Background(), nil, "exec", pod.Name, "--", "touch", "/tmp/go"); err != nil {
		t.Fatal(err)
	}
	ev := e.waitPodEvent(t, pod, "awk", event.KillContainer)
	t.Logf("event %s: %s", ev.Reason, ev.Message)
	checkNoKernelKill(t, podCg, ctrCg)
	e.figure(t, "Guaranteed pod: memory.max 64Mi on the pod cgroup and the container's, tripwire on both; leak: %s at %s threshold, oom_kill 0", ev.Reason, whichCgroup(ev, podCg))
}

// testResize: an in-place resize of the container's memory limit (the
// resize subresource) down and then up; the guard's threshold, as its
// tripwire in memory.high shows, follows the new memory.max.
func (e *v2env) testResize(t *testing.T) {
	pod := e.startPod(t, "resize", "sleep 3600", burstable("32Mi", "64Mi"), false)
	_, ctrCg := v2Cgroups(t, pod)
	if err := pollFor(10*time.Second, func() error {
		return wantFile(ctrCg, "memory.high", strconv.FormatUint(pageFloor(threshold(64<<20)), 10))
	}); err != nil {
		t.Fatalf("the guard's tripwire before the resize: %v", err)
	}
	for _, limit := range []uint64{48 << 20, 96 << 20} {
		patch := fmt.Sprintf(`{"spec":{"containers":[{"name":"app","resources":{"limits":{"memory":"%dMi"}}}]}}`, limit>>20)
		t0 := time.Now()
		if out, err := e.node.Kubectl(context.Background(), nil, "patch", "pod", pod.Name, "--subresource", "resize", "--patch", patch); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		var applied, followed time.Time
		deadline := time.Now().Add(2 * time.Minute)
		want := strconv.FormatUint(pageFloor(threshold(limit)), 10)
		for time.Now().Before(deadline) && followed.IsZero() {
			now := time.Now()
			if applied.IsZero() && wantFile(ctrCg, "memory.max", strconv.FormatUint(limit, 10)) == nil {
				applied = now
			}
			if !applied.IsZero() && wantFile(ctrCg, "memory.high", want) == nil {
				followed = now
			}
			time.Sleep(2 * time.Millisecond)
		}
		if followed.IsZero() {
			p, _ := e.client.CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
			t.Fatalf("resize to %d MiB: memory.max %s (applied %v), memory.high %s, want %s; pod status %+v",
				limit>>20, readTrim(t, ctrCg, "memory.max"), !applied.IsZero(), readTrim(t, ctrCg, "memory.high"), want, p.Status)
		}
		follow := followed.Sub(applied)
		followText := fmt.Sprintf("%v later", follow.Round(100*time.Microsecond))
		if follow == 0 {
			followText = "already in the same poll (2 ms apart)"
		}
		e.figure(t, "resize to %d MiB: memory.max applied %v after kubectl patch, threshold (memory.high %s) followed %s",
			limit>>20, applied.Sub(t0).Round(time.Millisecond), bytesMiB(pageFloor(threshold(limit))), followText)
		if follow > time.Second {
			t.Errorf("the threshold followed the new limit after %v, want within a second", follow)
		}
	}
}

// testUninstall: kubectl delete removes the guard, and no file of the
// bystander pod's cgroups differs from before the install; no cgroup of
// the node keeps a memory.high (the guard's tripwire restored).
func (e *v2env) testUninstall(t *testing.T, bystander *corev1.Pod, before map[string]string) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	t0 := time.Now()
	if _, err := e.node.Kubectl(ctx, e.manifest, "delete", "--wait=true", "--timeout=180s", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	err := poll(ctx, func() error {
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
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	e.figure(t, "uninstall: kubectl delete to no guard left %v", time.Since(t0).Round(100*time.Millisecond))
	after := cgroupFiles(t, bystander)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s: %q before the guard, %q after", k, v, after[k])
		}
	}
	_ = filepath.WalkDir(vmnode.PodCgroupRoot, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if b, err := os.ReadFile(filepath.Join(path, "memory.high")); err == nil && strings.TrimSpace(string(b)) != "max" {
			t.Errorf("%s: memory.high %s left set", path, strings.TrimSpace(string(b)))
		}
		if b, err := os.ReadFile(filepath.Join(path, "cgroup.freeze")); err == nil && strings.TrimSpace(string(b)) != "0" {
			t.Errorf("%s: left frozen", path)
		}
		return nil
	})
}

// testMemoryQoS: with the kubelet's MemoryQoS (alpha), the kubelet puts
// a container's memory.high at request + 0.9 x (limit - request), below
// the guard's threshold. The guard, installed again, leaves it alone (no
// tripwire), still kills the leak at its threshold before the kernel, and
// when uninstalled leaves the kubelet's value where it was.
func (e *v2env) testMemoryQoS(t *testing.T) {
	d := e.node.RestartKubelet(t, vmnode.KubeletConfig{SingleProcessOOMKill: true, FeatureGates: map[string]bool{"MemoryQoS": true}})
	e.figure(t, "kubelet restarted with MemoryQoS, node Ready again in %v", d.Round(100*time.Millisecond))
	pod := e.startPod(t, "memqos", leakScript, burstable("32Mi", "64Mi"), false)
	podCg, ctrCg := v2Cgroups(t, pod)
	kubeletHigh := readTrim(t, ctrCg, "memory.high")
	qos := memoryQoSHigh(32<<20, 64<<20)
	want := strconv.FormatUint(qos, 10)
	if kubeletHigh != want {
		t.Fatalf("%s/memory.high = %s under MemoryQoS, want the kubelet's %s", ctrCg, kubeletHigh, want)
	}
	e.install(t)
	time.Sleep(2 * time.Second) // the guard has walked and armed by now (it said it is guarding)
	if got := readTrim(t, ctrCg, "memory.high"); got != kubeletHigh {
		t.Fatalf("memory.high %s with the guard installed, want the kubelet's %s left alone", got, kubeletHigh)
	}
	t0 := time.Now()
	if _, err := e.node.Kubectl(context.Background(), nil, "exec", pod.Name, "--", "touch", "/tmp/go"); err != nil {
		t.Fatal(err)
	}
	ev := e.waitPodEvent(t, pod, "awk", event.KillProcess)
	took := time.Since(t0)
	t.Logf("event %s: %s", ev.Reason, ev.Message)
	if n := v2Events(t, ctrCg)["oom_kill"]; n != 0 {
		t.Errorf("the kernel OOM-killed %d process(es) in %s", n, ctrCg)
	}
	events := v2Events(t, ctrCg)
	t.Logf("%s/memory.events: %v", ctrCg, events)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if _, err := e.node.Kubectl(ctx, e.manifest, "delete", "--wait=true", "--timeout=180s", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	if err := poll(ctx, func() error {
		if pids := processesNamed("oom-guard"); len(pids) > 0 {
			return fmt.Errorf("oom-guard processes still run: %v", pids)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := readTrim(t, ctrCg, "memory.high"); got != kubeletHigh {
		t.Errorf("memory.high %s after the uninstall, want the kubelet's %s", got, kubeletHigh)
	}
	e.figure(t, "MemoryQoS: the kubelet's memory.high %s left alone (no tripwire); leak killed at %s threshold %v after its start: %s, container's memory.events high %d, oom_kill 0; the kubelet's value kept through the uninstall",
		bytesMiB(qos), whichCgroup(ev, podCg), took.Round(100*time.Millisecond), ev.Reason, events["high"])
}

// whichCgroup says whose threshold the guard's event was for: the pod's
// or the container's.
func whichCgroup(ev *corev1.Event, podCg string) string {
	var seed struct {
		OOMCgroup string `json:"oomcgroup"`
	}
	_ = json.Unmarshal([]byte(ev.Annotations[report.KubeEventAnnotation]), &seed)
	if seed.OOMCgroup == podCg {
		return "the pod's"
	}
	return "the container's"
}

// cgroupFiles reads the files of the pod's and its container's cgroups
// that a guard could change (and the kubelet sets).
func cgroupFiles(t *testing.T, pod *corev1.Pod) map[string]string {
	t.Helper()
	podCg, ctrCg := v2Cgroups(t, pod)
	m := map[string]string{}
	for _, cg := range []string{filepath.Dir(podCg), podCg, ctrCg} {
		for _, f := range []string{"memory.high", "memory.max", "memory.low", "memory.min", "memory.oom.group", "memory.swap.max", "cgroup.freeze", "cgroup.subtree_control", "cpu.max", "cpu.weight", "pids.max"} {
			if b, err := os.ReadFile(filepath.Join(cg, f)); err == nil {
				m[filepath.Join(cg, f)] = strings.TrimSpace(string(b))
			}
		}
	}
	return m
}

// startPod runs script as a busybox pod's PID 1, waits for it to run and,
// with release, lets the child start (touch /tmp/go). Deleted at the end.
func (e *v2env) startPod(t *testing.T, name, script string, res corev1.ResourceRequirements, release bool) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr(int64(1)),
			Containers: []corev1.Container{{
				Name: "app", Image: kube.BusyboxImage, ImagePullPolicy: corev1.PullNever,
				Command:   []string{"sh", "-c", script},
				Resources: res,
				ResizePolicy: []corev1.ContainerResizePolicy{
					{ResourceName: corev1.ResourceMemory, RestartPolicy: corev1.NotRequired},
					{ResourceName: corev1.ResourceCPU, RestartPolicy: corev1.NotRequired},
				},
			}},
		},
	}
	t0 := time.Now()
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
		if p.Status.Phase != corev1.PodRunning || len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].ContainerID == "" {
			return fmt.Errorf("pod %s is %s", name, p.Status.Phase)
		}
		created = p
		return nil
	})
	if err != nil {
		t.Fatalf("%v\nkubelet: %s", err, e.node.DaemonLog("kubelet"))
	}
	t.Logf("pod %s running %v after its creation", name, time.Since(t0).Round(100*time.Millisecond))
	if release {
		if _, err := e.node.Kubectl(ctx, nil, "exec", name, "--", "touch", "/tmp/go"); err != nil {
			t.Fatal(err)
		}
	}
	return created
}

// startReleased starts a Burstable pod of 32/64 Mi running script,
// releases its child, and checks the memory.oom.group the kubelet set on
// its container (the kubelet's default 1, 0 under singleProcessOOMKill).
func (e *v2env) startReleased(t *testing.T, name, script, oomGroup string) (pod *corev1.Pod, podCg, ctrCg string) {
	t.Helper()
	pod = e.startPod(t, name, script, burstable("32Mi", "64Mi"), true)
	podCg, ctrCg = v2Cgroups(t, pod)
	if g := readTrim(t, ctrCg, "memory.oom.group"); g != oomGroup {
		t.Errorf("%s/memory.oom.group = %s, want %s (the kubelet's singleProcessOOMKill %v)", ctrCg, g, oomGroup, e.node.Config().SingleProcessOOMKill)
	}
	return pod, podCg, ctrCg
}

func (e *v2env) podEvents(t *testing.T, pod *corev1.Pod) []string {
	t.Helper()
	selector := fields.OneTermEqualSelector("involvedObject.uid", string(pod.UID)).String()
	list, err := e.client.CoreV1().Events(pod.Namespace).List(context.Background(), metav1.ListOptions{FieldSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	for _, ev := range list.Items {
		if ev.Source.Component == report.KubeComponent {
			for i := int32(0); i < max(ev.Count, 1); i++ {
				seen = append(seen, ev.Reason+": "+ev.Message)
			}
		}
	}
	return seen
}

func countReason(evs []string, reason event.Reason) int {
	n := 0
	for _, s := range evs {
		if strings.HasPrefix(s, string(reason)+": ") {
			n++
		}
	}
	return n
}

// waitPodEvent waits for the guard's Event on the pod with one of the
// reasons, naming the container (and comm, if not ""), and checks what it
// carries, as the v1 test does.
func (e *v2env) waitPodEvent(t *testing.T, pod *corev1.Pod, comm string, reasons ...event.Reason) *corev1.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	found, err := guardEventOn(ctx, e.client, pod, reasons...)
	if err != nil {
		logs, _ := e.node.Kubectl(context.Background(), nil, "-n", "kube-system", "logs", "ds/oom-guard")
		onNode, _ := e.node.Kubectl(context.Background(), nil, "get", "events", "-A", "--field-selector", "involvedObject.kind=Node")
		t.Fatalf("%v\nthe guard's log:\n%s\nevents on the node:\n%s", err, logs, onNode)
	}
	if want := "spec.containers{app}"; found.InvolvedObject.FieldPath != want {
		t.Errorf("event's sub-object %q, want %q", found.InvolvedObject.FieldPath, want)
	}
	if !strings.Contains(found.Message, "container app") || (comm != "" && !strings.Contains(found.Message, comm+" (pid ")) {
		t.Errorf("message %q: want container app and the killed %s named", found.Message, comm)
	}
	if found.Source.Host != kube.VMNodeName || found.Type != corev1.EventTypeWarning {
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
	if seed["hostname"] != kube.VMNodeName || seed["podName"] != pod.Name {
		t.Errorf("annotation %v", seed)
	}
	return found
}

// waitRestart waits until the pod's container has restarted at least n
// times and runs again, and returns its restart count.
func (e *v2env) waitRestart(t *testing.T, pod *corev1.Pod, n int32) int32 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var rc int32
	err := poll(ctx, func() error {
		p, err := e.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(p.Status.ContainerStatuses) != 1 {
			return fmt.Errorf("container statuses %+v", p.Status.ContainerStatuses)
		}
		cs := p.Status.ContainerStatuses[0]
		rc = cs.RestartCount
		if cs.RestartCount < n || cs.State.Running == nil {
			return fmt.Errorf("container %+v, want %d restart(s) and running", cs, n)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	return rc
}

// checkRunning: the pod runs, its container never restarted, and stays
// so for a moment.
func (e *v2env) checkRunning(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	time.Sleep(3 * time.Second)
	p, err := e.client.CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.Phase != corev1.PodRunning || len(p.Status.ContainerStatuses) != 1 ||
		p.Status.ContainerStatuses[0].RestartCount != 0 || p.Status.ContainerStatuses[0].State.Running == nil {
		t.Errorf("pod %s: phase %s, containers %+v; want Running with restartCount 0", p.Name, p.Status.Phase, p.Status.ContainerStatuses)
	}
}

// v2Cgroups are the pod's and its container's cgroups on the v2 node.
func v2Cgroups(t *testing.T, pod *corev1.Pod) (podCg, ctrCg string) {
	t.Helper()
	var dirs []string
	for _, pattern := range []string{"pod" + string(pod.UID), "*/pod" + string(pod.UID)} {
		m, _ := filepath.Glob(filepath.Join(vmnode.PodCgroupRoot, pattern))
		dirs = append(dirs, m...)
	}
	if len(dirs) != 1 {
		t.Fatalf("pod %s has cgroups %v, want one", pod.Name, dirs)
	}
	if len(pod.Status.ContainerStatuses) != 1 {
		t.Fatalf("pod %s: %d container statuses", pod.Name, len(pod.Status.ContainerStatuses))
	}
	_, id, ok := strings.Cut(pod.Status.ContainerStatuses[0].ContainerID, "://")
	if !ok {
		t.Fatalf("pod %s: container ID %q", pod.Name, pod.Status.ContainerStatuses[0].ContainerID)
	}
	return dirs[0], filepath.Join(dirs[0], id)
}

// checkNoKernelKill: memory.events oom_kill is 0 in the pod's cgroup,
// which counts its containers' kills too (memory.events is hierarchical),
// also of a container whose cgroup went with the restart after a kill of
// all of it; and in the container's, if it is still there.
func checkNoKernelKill(t *testing.T, podCg, ctrCg string) {
	t.Helper()
	if n := v2Events(t, podCg)["oom_kill"]; n != 0 {
		t.Errorf("the kernel OOM-killed %d process(es) in %s", n, podCg)
	}
	if _, err := os.Stat(filepath.Join(ctrCg, "memory.events")); err == nil {
		if n := v2Events(t, ctrCg)["oom_kill"]; n != 0 {
			t.Errorf("the kernel OOM-killed %d process(es) in %s", n, ctrCg)
		}
	}
}

// v2Events reads memory.events (hierarchical: the cgroup and below).
func v2Events(t *testing.T, cg string) map[string]uint64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cg, "memory.events"))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]uint64{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok {
			m[k], _ = strconv.ParseUint(v, 10, 64)
		}
	}
	return m
}

func readTrim(t *testing.T, cg, file string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cg, file))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func wantFile(cg, file, want string) error {
	b, err := os.ReadFile(filepath.Join(cg, file))
	if err != nil {
		return err
	}
	if got := strings.TrimSpace(string(b)); got != want {
		return fmt.Errorf("%s/%s = %s, want %s", cg, file, got, want)
	}
	return nil
}

func pollFor(d time.Duration, check func() error) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return poll(ctx, check)
}

// threshold is the guard's at the manifest's margins: limit - clamp(limit
// x 0.02, 1 MiB, 30 MiB).
func threshold(limit uint64) uint64 {
	margin := min(max(uint64(float64(limit)*0.02), 1<<20), 30<<20)
	return limit - margin
}

// memoryQoSHigh is the kubelet's memory.high under MemoryQoS, with its
// default memoryThrottlingFactor 0.9.
func memoryQoSHigh(request, limit uint64) uint64 {
	return pageFloor(uint64(float64(request) + float64(limit-request)*0.9))
}

func pageFloor(b uint64) uint64 { return b / 4096 * 4096 }

func bytesMiB(b uint64) string { return fmt.Sprintf("%.1fMiB", float64(b)/(1<<20)) }
