package report

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/oom-guard/oom-guard/internal/event"
)

func podKill(ns, name, uid string) event.Event {
	return event.Event{Reason: event.ChildOOM,
		ProcCgroup: "/sys/fs/cgroup/memory/kubepods/burstable/pod" + uid + "/0123abcd",
		Identity:   event.Identity{PodNamespace: ns, PodName: name, PodUID: uid, ContainerName: "app"}}
}

// Counts by workload outlive a container's restart, are folded away past
// the cap on pods, and go once a pod's cgroup has been gone for the grace.
func TestWorkloadSeriesBounded(t *testing.T) {
	m := NewMetrics()
	m.workloads = newWorkloads(2, time.Minute)
	gone := map[string]bool{}
	m.workloads.exists = func(p string) bool { return !gone[p] }

	a := podKill("shop", "web-0", "u-a")
	m.Event(a)
	restarted := a
	restarted.ContainerID = "another-container-id" // same pod, same container name
	m.Event(restarted)
	m.Event(podKill("shop", "web-1", "u-b"))
	m.Event(podKill("shop", "web-2", "u-c")) // a third pod: over the cap of 2
	child := func(ns, pod, container string) float64 {
		return testutil.ToFloat64(m.kernelKills.WithLabelValues(string(event.ChildOOM), ns, pod, container))
	}
	if got := child("shop", "web-0", "app"); got != 2 {
		t.Errorf("web-0 counted %v, want 2 (across the container's restart)", got)
	}
	if got := child("", "", ""); got != 1 {
		t.Errorf("unlabelled %v, want the folded kill, 1", got)
	}
	if got := testutil.ToFloat64(m.seriesFolded); got != 1 {
		t.Errorf("folded %v, want 1", got)
	}

	gone["/sys/fs/cgroup/memory/kubepods/burstable/podu-a"] = true
	now := time.Now()
	m.sweep(now)
	m.sweep(now.Add(59 * time.Second))
	if got := child("shop", "web-0", "app"); got != 2 {
		t.Errorf("web-0 deleted before its grace ended")
	}
	m.sweep(now.Add(time.Minute))
	body := gathered(t, m)
	if strings.Contains(body, `value:"web-0"`) || !strings.Contains(body, `value:"web-1"`) {
		t.Errorf("after the grace: want web-0's series gone and web-1's kept:\n%s", body)
	}
	m.Event(podKill("shop", "web-3", "u-d")) // room again under the cap
	if got := child("shop", "web-3", "app"); got != 1 {
		t.Errorf("web-3 counted %v after web-0 went, want 1", got)
	}
}

func gathered(t *testing.T, m *Metrics) string {
	t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		if mf.GetName() == "oomguard_kernel_oom_kills_total" {
			for _, mt := range mf.Metric {
				fmt.Fprintln(&b, mt.String())
			}
		}
	}
	return b.String()
}

func TestPodCgroup(t *testing.T) {
	for _, tc := range []struct{ path, uid, want string }{
		{"/sys/fs/cgroup/memory/kubepods/burstable/pod3d63-45/abc", "3d63-45", "/sys/fs/cgroup/memory/kubepods/burstable/pod3d63-45"},
		{"/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3d63_45.slice/cri-containerd-abc.scope", "3d63-45",
			"/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3d63_45.slice"},
		{"/sys/fs/cgroup/memory/docker/abc", "", ""},
	} {
		if got := podCgroup(tc.path, tc.uid); got != tc.want {
			t.Errorf("podCgroup(%s, %s) = %q, want %q", tc.path, tc.uid, got, tc.want)
		}
	}
}
