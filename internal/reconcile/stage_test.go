package reconcile

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/identity"
)

type collector struct {
	mu  sync.Mutex
	evs []event.Event
	ch  chan event.Event
}

func newCollector() *collector { return &collector{ch: make(chan event.Event, 100)} }

func (c *collector) Send(ev event.Event) {
	c.mu.Lock()
	c.evs = append(c.evs, ev)
	c.mu.Unlock()
	select {
	case c.ch <- ev:
	default:
	}
}

func (c *collector) all() []event.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]event.Event(nil), c.evs...)
}

// next waits for the next event (the stage runs on its own goroutine).
func (c *collector) next(t *testing.T) event.Event {
	t.Helper()
	select {
	case ev := <-c.ch:
		return ev
	case <-time.After(5 * time.Second):
		t.Fatalf("no event within 5s; so far %+v", c.all())
	}
	return event.Event{}
}

// counts records what Metrics.Event was given.
type counts struct {
	mu  sync.Mutex
	evs []event.Event
}

func (c *counts) Event(ev event.Event) { c.mu.Lock(); c.evs = append(c.evs, ev); c.mu.Unlock() }
func (c *counts) reasons() []event.Reason {
	c.mu.Lock()
	defer c.mu.Unlock()
	var rs []event.Reason
	for _, ev := range c.evs {
		rs = append(rs, ev.Reason)
	}
	return rs
}

// stageOnly is a Reconciler without its goroutine: out and take are
// called directly.
func stageOnly(cfg Config, next Sink) *Reconciler {
	cfg.MemRoot, cfg.Window = memRoot, window
	return &Reconciler{cfg: cfg, next: next, match: newMatcher(cfg)}
}

const cid = "be62495eb02beef730005b50c8e0e97bc9c8fc5e8afd9796e91e5a39fd28765e"

var container = memRoot + "/docker/" + cid

func childKill(pidInNS int, cgroup string) event.CounterKill {
	return event.CounterKill{ProcCgroup: cgroup, OOMCgroup: cgroup, Limit: 64 << 20,
		Victims: []event.Process{{Pid: 7936, Comm: "dd", PidInNS: pidInNS}}}
}

// The seed-003 case: a container's child killed while the container runs
// on. It is counted once, under its final reason.
func TestChildOOMClassification(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cgroup  string
		pidInNS int
		left    []int // processes left in the cgroup
		want    event.Reason
	}{
		{"child killed, container runs on", container, 17, []int{100}, event.ChildOOM},
		{"init killed: the container exits", container, 1, []int{100}, event.CgroupOOM},
		{"child killed, nothing left", container, 17, nil, event.CgroupOOM},
		{"no container: a plain cgroup", memRoot + "/batch/job1", 17, []int{100}, event.CgroupOOM},
		{"victim's namespace pid unknown, no runtime", container, 0, []int{100}, event.CgroupOOM},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, m := newCollector(), &counts{}
			r := stageOnly(Config{Metrics: m, Procs: func(cg string) ([]int, error) {
				if cg != tc.cgroup {
					t.Errorf("asked for the processes of %s, want %s", cg, tc.cgroup)
				}
				return tc.left, nil
			}}, out)
			r.out(fromCounter(childKill(tc.pidInNS, tc.cgroup)), nil)
			evs := out.all()
			if len(evs) != 1 || evs[0].Reason != tc.want {
				t.Fatalf("events %+v, want one %s", evs, tc.want)
			}
			if got := m.reasons(); len(got) != 1 || got[0] != tc.want {
				t.Fatalf("counted %v, want [%s]", got, tc.want)
			}
			if strings.Contains(tc.cgroup, "/docker/") && (evs[0].ContainerID != cid || evs[0].Runtime != "docker") {
				t.Fatalf("identity %+v", evs[0].Identity)
			}
		})
	}
}

// One kernel kill seen by both sources is counted once.
func TestKernelKillCountedOnce(t *testing.T) {
	k := realKill(t)
	out, m := newCollector(), &counts{}
	r := stageOnly(Config{Metrics: m, Scope: memRoot + k.TaskMemcg}, out)
	c := counterKill(k, k.Pid)
	r.take(input{counted: &event.CounterKill{ProcCgroup: c.ProcCgroup, OOMCgroup: c.OOMCgroup, Victims: c.Processes[:1]}}, t0)
	r.take(input{kill: &k}, t0.Add(time.Millisecond))
	r.outAll(r.match.expire(t0.Add(time.Hour)))
	if got := m.reasons(); len(got) != 1 || got[0] != event.CgroupOOM {
		t.Fatalf("counted %v, want one CgroupOOM", got)
	}
}

// The guard's actions become events at once, with the one message.
func TestActionEvent(t *testing.T) {
	out, m := newCollector(), &counts{}
	r := stageOnly(Config{Metrics: m, Hostname: "node-1"}, out)
	a := event.Action{Reason: event.KillProcess, Policy: "Process", OOMCgroup: container, ProcCgroup: container,
		Threshold: 63 << 20, Usage: 63<<20 + 1<<19, Limit: 64 << 20, Reaction: 108 * time.Microsecond,
		Killed: []event.Process{{Pid: 18655, Comm: "tail"}}}
	r.take(input{action: &a}, t0)
	evs := out.all()
	if len(evs) != 1 {
		t.Fatalf("%+v", evs)
	}
	ev := evs[0]
	want := "oom-guard killed tail (pid 18655) in container " + cid[:12] + " before the kernel's OOM killer: usage 63.5MiB over threshold 63.0MiB of limit 64.0MiB, policy process, 108µs after the kernel's notification [cgroup " + container + "]"
	if ev.Message != want || ev.Killed != "18655(tail) " || ev.Hostname != "node-1" || ev.Reaction != a.Reaction {
		t.Fatalf("event %+v\nmessage %q\nwant    %q", ev, ev.Message, want)
	}
	if got := m.reasons(); len(got) != 1 || got[0] != event.KillProcess {
		t.Fatalf("counted %v", got)
	}
}

// --kill-container-on-child-oom: the container of a ChildOOM is killed off
// the reporting path (a slow runtime holds up no other event) and the kill
// is an event of its own, which Stop waits for.
func TestChildOOMStopsTheContainer(t *testing.T) {
	out, m := newCollector(), &counts{}
	asked := make(chan string, 1)
	release := make(chan struct{})
	kill := func(cg string) ([]event.Process, error) {
		asked <- cg
		<-release // a runtime slow to answer
		return []event.Process{{Pid: 100, Comm: "sh"}}, nil
	}
	r := New(Config{MemRoot: memRoot, Window: time.Millisecond, Metrics: m, KillOnChildOOM: kill,
		Procs: func(string) ([]int, error) { return []int{100}, nil }}, out)
	r.Counted(childKill(17, container))
	if ev := out.next(t); ev.Reason != event.ChildOOM {
		t.Fatalf("%+v", ev)
	}
	if cg := <-asked; cg != container {
		t.Fatalf("killed %s, want %s", cg, container)
	}
	// While the runtime takes its time, other events go out.
	r.Acted(event.Action{Reason: event.KillProcess, ProcCgroup: memRoot + "/other", Killed: []event.Process{{Pid: 5, Comm: "x"}}})
	if ev := out.next(t); ev.Reason != event.KillProcess {
		t.Fatalf("%+v", ev)
	}
	close(release)
	r.Stop()
	evs := out.all()
	last := evs[len(evs)-1]
	if len(evs) != 3 || last.Reason != event.KillContainer || !strings.Contains(last.Message, "after the kernel OOM-killed its child dd (pid 7936)") ||
		last.ProcCgroup != container || last.Killed != "100(sh) " {
		t.Fatalf("events %+v", evs)
	}
	if got := m.reasons(); len(got) != 3 || got[2] != event.KillContainer {
		t.Fatalf("counted %v", got)
	}
}

// A full queue drops and counts; no input ever blocks.
func TestInputsNeverBlock(t *testing.T) {
	block := make(chan struct{})
	r := New(Config{MemRoot: memRoot, QueueSize: 2, Window: time.Hour}, stuckSink(block))
	defer func() { close(block); r.Stop() }()
	start := time.Now()
	for i := 0; i < 1000; i++ {
		r.Acted(event.Action{Reason: event.KillProcess})
		r.Counted(event.CounterKill{})
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("2000 inputs took %v", d)
	}
	if r.Dropped() == 0 {
		t.Fatal("nothing dropped with a queue of 2")
	}
}

// stuckSink blocks every Send until block is closed: a sink far slower than
// the kills.
type stuckSink chan struct{}

func (s stuckSink) Send(event.Event) { <-s }

// Stop reports what still waits for its match.
func TestStopReportsWhatWaits(t *testing.T) {
	out := newCollector()
	r := New(Config{MemRoot: memRoot, Window: time.Hour}, out)
	r.Counted(childKill(17, memRoot+"/batch/job1"))
	r.Stop()
	if evs := out.all(); len(evs) != 1 || evs[0].Reason != event.CgroupOOM {
		t.Fatalf("%+v", evs)
	}
}

// A runtime slower than a second still names the event's pod (on a busy
// cgroup v2 node containerd took longer than that for a container it was
// restarting, and the Event went on the Node for want of the pod's name).
func TestSlowRuntimeStillNames(t *testing.T) {
	slow := inspectorFunc(func(ctx context.Context, id identity.ID) (identity.Info, error) {
		select {
		case <-time.After(1500 * time.Millisecond):
		case <-ctx.Done():
			return identity.Info{}, ctx.Err()
		}
		return identity.Info{Identity: event.Identity{ContainerName: "app", PodName: "leak", PodNamespace: "default"}}, nil
	})
	out := newCollector()
	r := stageOnly(Config{Inspector: slow}, out)
	r.take(input{action: &event.Action{Reason: event.KillContainer, ProcCgroup: container, Killed: []event.Process{{Pid: 1, Comm: "x"}}}}, t0)
	if evs := out.all(); len(evs) != 1 || evs[0].PodName != "leak" || evs[0].ContainerName != "app" {
		t.Fatalf("events %+v: want the slow runtime's names", evs)
	}
}

type inspectorFunc func(ctx context.Context, id identity.ID) (identity.Info, error)

func (f inspectorFunc) Inspect(ctx context.Context, id identity.ID) (identity.Info, error) {
	return f(ctx, id)
}

// A memory.oom.group kill of which the counters could name one process,
// while the container's cgroup still lists the others (dying), is the
// kernel's kill of the whole container, never a ContainerChildOOMKilled;
// the message says so.
func TestGroupKillIsNotAChildOOM(t *testing.T) {
	out := newCollector()
	r := stageOnly(Config{Procs: func(string) ([]int, error) { return []int{100}, nil }}, out)
	k := childKill(17, container)
	k.OOMGroup = container
	r.out(fromCounter(k), nil)
	evs := out.all()
	if len(evs) != 1 || evs[0].Reason != event.CgroupOOM {
		t.Fatalf("events %+v, want one CgroupOOM", evs)
	}
	if want := "memory.oom.group is set on " + container + ": the kernel killed all of it"; !strings.Contains(evs[0].Message, want) {
		t.Fatalf("message %q, want %q", evs[0].Message, want)
	}
}
