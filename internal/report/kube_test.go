package report

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/rest"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/testenv/kube"
)

// The real-cluster tests below share one cluster; it is stopped here.
func TestMain(m *testing.M) {
	code := m.Run()
	kube.Cleanup()
	os.Exit(code)
}

const testPodUID = "3d6329e5-455f-11e9-a7e5-06925242d7ea"

// podEvent is seed 000's event, as the reconciler completes it for a pod
// whose runtime named it.
func podEvent(reason event.Reason, pid int) event.Event {
	ev := seedEvent()
	ev.Reason = reason
	ev.Hostname = kube.NodeName
	ev.Limit = 209715200
	ev.Processes = []event.Process{{Pid: pid, Comm: "fakeOOM", AnonRSSKB: 190 << 10}}
	ev.Killed = event.KilledField(ev.Processes)
	ev.Identity = event.Identity{Runtime: "containerd", ContainerID: strings.Repeat("ab", 32),
		ContainerName: "app", PodUID: testPodUID, PodName: "web-1", PodNamespace: "shop"}
	return ev
}

func TestKubeInvolvedObject(t *testing.T) {
	k := &KubeEvents{node: "node-1"}
	pod := k.involvedObject(podEvent(event.KillProcess, 1))
	if pod.Kind != "Pod" || pod.Namespace != "shop" || pod.Name != "web-1" || string(pod.UID) != testPodUID || pod.FieldPath != "spec.containers{app}" {
		t.Errorf("pod event on %+v", pod)
	}
	uidOnly := podEvent(event.CgroupOOM, 1)
	uidOnly.PodName, uidOnly.PodNamespace, uidOnly.ContainerName = "", "", ""
	node := k.involvedObject(uidOnly)
	if node.Kind != "Node" || node.Name != "node-1" || string(node.UID) != "node-1" || node.Namespace != "" {
		t.Errorf("an event with only the pod's UID on %+v, want the node", node)
	}
	if msg := kubeMessage(uidOnly, false); !strings.Contains(msg, "pod UID "+testPodUID) {
		t.Errorf("the node's message %q does not name the pod's UID", msg)
	}
}

// The message says what happened, to which process and container, the
// usage against the limit and the policy; on the node, where.
func TestKubeMessage(t *testing.T) {
	for _, tc := range []struct {
		reason event.Reason
		want   []string
	}{
		{event.KillProcess, []string{"oom-guard killed fakeOOM (pid 16481, anon-rss 190 MiB) in container app", "usage 196.9MiB over threshold 196.0MiB of limit 200.0MiB", "policy process"}},
		{event.KillContainer, []string{"oom-guard killed the container in container app", "policy container"}},
		{event.WouldKill, []string{"would have killed fakeOOM", "policy noop"}},
		{event.ChildOOM, []string{"the kernel OOM-killed fakeOOM (pid 16481", "a child process in container app", "the container keeps running", "memory limit 200.0MiB hit"}},
		{event.CgroupOOM, []string{"the kernel OOM-killed fakeOOM (pid 16481", "in container app"}},
		{event.SystemOOM, []string{"system OOM: the kernel killed fakeOOM"}},
	} {
		msg := kubeMessage(podEvent(tc.reason, 16481), true)
		for _, w := range tc.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: message %q lacks %q", tc.reason, msg, w)
			}
		}
		if strings.Contains(msg, "/sys/fs/cgroup") && tc.reason != event.ChildOOM && tc.reason != event.CgroupOOM {
			t.Errorf("%s: the pod's message %q carries a cgroup path", tc.reason, msg)
		}
	}
	// On cgroup v2 the process policy kills a whole memory.oom.group
	// container (found on the first real v2 node): the message must not
	// claim the container policy, and says why all of it died.
	group := podEvent(event.KillContainer, 16481)
	group.Policy = "Process"
	if msg := kubeMessage(group, true); strings.Contains(msg, "policy container") ||
		!strings.Contains(msg, "policy process, the whole container because memory.oom.group is set") {
		t.Errorf("process policy, memory.oom.group kill: message %q", msg)
	}
	onNode := kubeMessage(podEvent(event.KillProcess, 1), false)
	if !strings.HasSuffix(onNode, "[pod shop/web-1, cgroup "+seedEvent().ProcCgroup+"]") {
		t.Errorf("the node's message %q does not say where", onNode)
	}
	long := podEvent(event.KillContainer, 1)
	for i := 0; i < 500; i++ {
		long.Processes = append(long.Processes, event.Process{Pid: 1000 + i, Comm: strings.Repeat("x", 15)})
	}
	if msg := kubeMessage(long, false); len(msg) > maxKubeMessage || !strings.Contains(msg, "501 processes:") || !strings.Contains(msg, "and 496 more") {
		t.Errorf("a 501-process kill: message of %d bytes: %.200q", len(msg), msg)
	}
}

// The annotation is the seed's JSON while it fits, and stays bounded and
// valid when a container kill lists thousands of processes.
func TestKubeAnnotation(t *testing.T) {
	var seed map[string]any
	if err := json.Unmarshal([]byte(annotationJSON(podEvent(event.KillProcess, 16481))), &seed); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"hostname", "timestamp", "oomcgroup", "proccgroup", "threshold", "usage", "killed", "stats", "policy"} {
		if _, ok := seed[f]; !ok {
			t.Errorf("the seed's field %q is missing: %v", f, seed)
		}
	}
	big := podEvent(event.KillContainer, 1)
	for i := 0; i < 5000; i++ {
		big.Processes = append(big.Processes, event.Process{Pid: 1000 + i, Comm: "worker"})
	}
	big.Killed = event.KilledField(big.Processes)
	big.Stats = strings.Repeat("total_rss 1|", 400)
	a := annotationJSON(big)
	if len(a) > maxKubeAnnotation || !json.Valid([]byte(a)) || !strings.Contains(a, `"oomcgroup"`) {
		t.Errorf("annotation of a 5000-process kill: %d bytes, valid %v", len(a), json.Valid([]byte(a)))
	}
}

// An API server that accepts connections and never answers: Send still
// returns at once, and what waits for it stays bounded.
func TestKubeSendNeverBlocksOnAHungAPIServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns atomic.Int32
	done := make(chan struct{})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(done)
				return
			}
			conns.Add(1)
			defer c.Close() // held open, never answered, until the test ends
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	client, err := NewKubeEventsClient(&rest.Config{Host: "http://" + ln.Addr().String(), Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	metrics := NewMetrics()
	k := NewKubeEvents(client, KubeOptions{Node: "node-1", RetryInterval: time.Hour}, metrics)

	heapBefore := heapInUse()
	const sends = 20000
	var slowest time.Duration
	for i := 0; i < sends; i++ {
		ev := podEvent(event.ChildOOM, 100000+i) // all different: nothing aggregates away
		ev.Stats = strings.Repeat("total_rss 123456789|", 60)
		t0 := time.Now()
		k.Send(ev)
		slowest = max(slowest, time.Since(t0))
	}
	grown := int64(heapInUse()) - int64(heapBefore)
	t.Logf("%d sends to a hung API server: slowest %v, heap grew %d KiB, %d connection(s)", sends, slowest, grown>>10, conns.Load())
	if slowest > 20*time.Millisecond {
		t.Errorf("a Send took %v", slowest)
	}
	if dropped := testutil.ToFloat64(kubeCounters(metrics).WithLabelValues(kubeDropped)); dropped < sends-kubeBacklog-1 {
		t.Errorf("%v events counted as dropped, want at least %d", dropped, sends-kubeBacklog-1)
	}
	// At most client-go's two 1000-event queues, each event a few KiB.
	if grown > 32<<20 {
		t.Errorf("the heap grew by %d MiB for %d events waiting on a hung API server", grown>>20, sends)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	t0 := time.Now()
	k.Stop(ctx)
	if d := time.Since(t0); d > 3*time.Second {
		t.Errorf("Stop took %v with its context ending after 2s", d)
	}
	k.Send(podEvent(event.ChildOOM, 1)) // after Stop: dropped, no panic
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// On a real API server: each kind of event on its object, repeats
// aggregated as the kubelet's are, and Stop writes what is queued.
func TestKubeEventsOnARealAPIServer(t *testing.T) {
	c := kube.Require(t)
	admin, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	client, err := NewKubeEventsClient(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	metrics := NewMetrics()
	k := NewKubeEvents(client, KubeOptions{Node: kube.NodeName}, metrics)
	ns := fmt.Sprintf("oomguard-report-%d", time.Now().UnixNano()%1e6)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })

	onPod := func(reason event.Reason, pid int) event.Event {
		ev := podEvent(reason, pid)
		ev.PodNamespace = ns
		return ev
	}
	k.Send(onPod(event.KillProcess, 10))
	// One identical event twice: one Event, counted twice (a PATCH).
	twice := onPod(event.CgroupOOM, 20)
	k.Send(twice)
	k.Send(twice)
	// Twelve similar ones (same reason and object, another pid each): after
	// ten, client-go combines them into one Event.
	for i := 0; i < 12; i++ {
		k.Send(onPod(event.ChildOOM, 100+i))
	}
	system := event.Event{Hostname: kube.NodeName, Timestamp: time.Now(), Reason: event.SystemOOM, Policy: "Kernel",
		Processes: []event.Process{{Pid: 4242, Comm: "java"}}, ProcCgroup: "/sys/fs/cgroup/memory/system.slice/app.service"}
	system.Killed = event.KilledField(system.Processes)
	k.Send(system)
	stopCtx, stopCancel := context.WithTimeout(ctx, 30*time.Second)
	k.Stop(stopCtx)
	stopCancel()

	podEvents, err := admin.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	byReason := map[string][]corev1.Event{}
	for _, e := range podEvents.Items {
		if e.InvolvedObject.Kind != "Pod" || e.InvolvedObject.Name != "web-1" || string(e.InvolvedObject.UID) != testPodUID ||
			e.InvolvedObject.FieldPath != "spec.containers{app}" || e.Source.Component != KubeComponent || e.Source.Host != kube.NodeName {
			t.Errorf("event %s on %+v from %+v", e.Reason, e.InvolvedObject, e.Source)
		}
		byReason[e.Reason] = append(byReason[e.Reason], e)
	}
	if got := byReason[string(event.KillProcess)]; len(got) != 1 || got[0].Annotations[KubeEventAnnotation] == "" {
		t.Errorf("KillProcess events: %+v", got)
	}
	if got := byReason[string(event.CgroupOOM)]; len(got) != 1 || got[0].Count != 2 {
		t.Errorf("an identical event sent twice: %d Event(s), %+v", len(got), got)
	}
	child := byReason[string(event.ChildOOM)]
	var combined int32
	for _, e := range child {
		if strings.HasPrefix(e.Message, "(combined from similar events): ") {
			combined += e.Count
		}
	}
	if len(child) != 10 || combined != 3 {
		t.Errorf("12 similar events: %d Events, %d counted as combined; want 9 single and one combined of 3", len(child), combined)
	}

	nodeSel := fields.OneTermEqualSelector("involvedObject.name", kube.NodeName).String()
	nodeEvents, err := admin.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: nodeSel})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range nodeEvents.Items {
		if e.Reason == string(event.SystemOOM) && e.Source.Component == KubeComponent {
			found = true
			if e.InvolvedObject.Kind != "Node" || string(e.InvolvedObject.UID) != kube.NodeName ||
				!strings.Contains(e.Message, "java (pid 4242)") || !strings.Contains(e.Message, "system.slice/app.service") {
				t.Errorf("SystemOOM event %+v: %s", e.InvolvedObject, e.Message)
			}
		}
	}
	if !found {
		t.Errorf("no SystemOOM event on node %s", kube.NodeName)
	}
}
