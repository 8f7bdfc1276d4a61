package reconcile

import (
	"strings"
	"testing"

	"github.com/oom-guard/oom-guard/internal/event"
)

const testPodUID = "3d6329e5-455f-11e9-a7e5-06925242d7ea"

// podEvent is seed 000's event as the stage completes it for a pod whose
// runtime named it.
func podEvent(reason event.Reason, pid int) event.Event {
	const cg = "/sys/fs/cgroup/memory/kubepods/burstable/pod" + testPodUID + "/223d4795cc3b33e28e702f72e0497e1153c4a809de6b4363f27acc12a6781cdb"
	ev := event.Event{
		OOMCgroup: cg, ProcCgroup: cg, Threshold: 205520896, Usage: 206483456, Limit: 209715200,
		Policy: "Container", Reason: reason,
		Processes: []event.Process{{Pid: pid, Comm: "fakeOOM", AnonRSSKB: 190 << 10}},
		Identity: event.Identity{Runtime: "containerd", ContainerID: strings.Repeat("ab", 32),
			ContainerName: "app", PodUID: testPodUID, PodName: "web-1", PodNamespace: "shop"},
	}
	ev.Killed = event.KilledField(ev.Processes)
	return ev
}

// The message says what happened, to which process and container, the
// usage against the limit and the policy, and where.
func TestDescribe(t *testing.T) {
	child := podEvent(event.ChildOOM, 7936)
	for _, tc := range []struct {
		name   string
		ev     event.Event
		action *event.Action
		want   []string
	}{
		{"process", podEvent(event.KillProcess, 16481), nil, []string{"oom-guard killed fakeOOM (pid 16481, anon-rss 190 MiB) in container app", "usage 196.9MiB over threshold 196.0MiB of limit 200.0MiB", "policy process"}},
		{"container", podEvent(event.KillContainer, 16481), nil, []string{"oom-guard killed the container in container app", "policy container"}},
		{"noop", podEvent(event.WouldKill, 16481), nil, []string{"would have killed fakeOOM", "policy noop"}},
		{"child", podEvent(event.ChildOOM, 16481), nil, []string{"the kernel OOM-killed fakeOOM (pid 16481", "a child process in container app", "the container keeps running", "memory limit 200.0MiB hit"}},
		{"cgroup", podEvent(event.CgroupOOM, 16481), nil, []string{"the kernel OOM-killed fakeOOM (pid 16481", "in container app"}},
		{"system", podEvent(event.SystemOOM, 16481), nil, []string{"system OOM: the kernel killed fakeOOM"}},
		{"after a child's OOM", podEvent(event.KillContainer, 1), &event.Action{AfterChildOOM: &child}, []string{"killed the container in container app", "after the kernel OOM-killed its child fakeOOM (pid 7936", "--kill-container-on-child-oom"}},
	} {
		msg := describe(tc.ev, tc.action)
		for _, w := range append(tc.want, "[pod shop/web-1, cgroup "+tc.ev.ProcCgroup+"]") {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: message %q lacks %q", tc.name, msg, w)
			}
		}
	}
	uidOnly := podEvent(event.CgroupOOM, 1)
	uidOnly.PodName, uidOnly.PodNamespace, uidOnly.ContainerName = "", "", ""
	if msg := describe(uidOnly, nil); !strings.Contains(msg, "[pod UID "+testPodUID) || !strings.Contains(msg, "in container abababababab") {
		t.Errorf("an event known by IDs alone: %q", msg)
	}
	long := podEvent(event.KillContainer, 1)
	for i := 0; i < 500; i++ {
		long.Processes = append(long.Processes, event.Process{Pid: 1000 + i, Comm: strings.Repeat("x", 15)})
	}
	if msg := describe(long, nil); len(msg) > 600 || !strings.Contains(msg, "501 processes:") || !strings.Contains(msg, "and 496 more") {
		t.Errorf("a 501-process kill: message of %d bytes: %.200q", len(msg), msg)
	}
	group := podEvent(event.KillContainer, 1)
	group.Policy, group.OOMGroup = "Process", "/sys/fs/cgroup/c"
	if msg := describe(group, nil); !strings.Contains(msg, "policy process") || strings.Contains(msg, "policy container") ||
		!strings.Contains(msg, "memory.oom.group is set on /sys/fs/cgroup/c: the kernel would kill all of it, not one process, so the process policy did too") {
		t.Errorf("oom.group kill under the process policy: %q", msg)
	}
}
