package reconcile

import (
	"bufio"
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/identity"
	"github.com/oom-guard/oom-guard/internal/kmsg"
)

type collector struct {
	mu  sync.Mutex
	evs []event.Event
}

func (c *collector) Send(ev event.Event) {
	c.mu.Lock()
	c.evs = append(c.evs, ev)
	c.mu.Unlock()
}

func (c *collector) all() []event.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]event.Event(nil), c.evs...)
}

// realKill is the kill this project's own test machine logged (kmsg's
// testdata): the kernel's own words, not a made-up record.
func realKill(t *testing.T) kmsg.Kill {
	t.Helper()
	f, err := os.Open("../kmsg/testdata/self-linux-6.18-cgroup-v1.kmsg")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := kmsg.NewParser()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "#") {
			continue
		}
		r, err := kmsg.ParseRecord(sc.Bytes())
		if err != nil {
			continue
		}
		if k, ok := p.Feed(r); ok {
			return k
		}
	}
	t.Fatal("no kill in the sample")
	return kmsg.Kill{}
}

const memRoot = "/sys/fs/cgroup/memory"

func newTest(t *testing.T, cfg Config) (*Reconciler, *collector) {
	t.Helper()
	out := &collector{}
	cfg.MemRoot = memRoot
	cfg.Window = 50 * time.Millisecond
	r := New(cfg, out)
	t.Cleanup(r.Stop)
	return r, out
}

// counterEvent is what the guard reports when the victim's cgroup counter
// moved; pid 0 when the processes seen before did not tell the victim.
func counterEvent(k kmsg.Kill, pid int) event.Event {
	ev := event.Event{Reason: event.CgroupOOM, Policy: "Kernel", ProcCgroup: memRoot + k.TaskMemcg, OOMCgroup: memRoot + k.TaskMemcg}
	if pid > 0 {
		ev.Processes = []event.Process{{Pid: pid, Comm: k.Comm, AnonRSSKB: 1, PidInNS: pid}}
	}
	return ev
}

func waitN(t *testing.T, c *collector, n int) []event.Event {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for len(c.all()) < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(120 * time.Millisecond) // anything more would come within two windows
	evs := c.all()
	if len(evs) != n {
		t.Fatalf("%d events, want %d: %+v", len(evs), n, evs)
	}
	return evs
}

// One kill seen by both sources is reported once, with the kernel's
// figures, whichever source speaks first.
func TestBothSourcesOneEvent(t *testing.T) {
	k := realKill(t)
	for _, tc := range []struct {
		name        string
		pid         int
		kernelFirst bool
	}{
		{"counter first, victim known", k.Pid, false},
		{"kernel first, victim known", k.Pid, true},
		{"counter first, victim unknown", 0, false},
		{"kernel first, victim unknown", 0, true},
		{"summary rate-limited, kernel first", k.Pid, true},
		{"summary rate-limited, counter first", k.Pid, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, out := newTest(t, Config{Scope: memRoot + k.TaskMemcg})
			logged := k
			if strings.HasPrefix(tc.name, "summary rate-limited") {
				logged.TaskMemcg, logged.OOMMemcg = "", ""
			}
			if tc.kernelFirst {
				r.Kernel(logged)
				r.Send(counterEvent(k, tc.pid))
			} else {
				r.Send(counterEvent(k, tc.pid))
				time.Sleep(10 * time.Millisecond)
				r.Kernel(logged)
			}
			ev := waitN(t, out, 1)[0] // merged: the kernel's anon-rss, not the counter's
			p := ev.Processes[0]
			if ev.Reason != event.CgroupOOM || p.Pid != k.Pid || p.Comm != k.Comm || p.AnonRSSKB != k.AnonRSSKB ||
				ev.OOMCgroup != memRoot+k.OOMMemcg || ev.Killed != event.KilledField(ev.Processes) {
				t.Fatalf("merged event %+v from kill %+v", ev, k)
			}
		})
	}
}

// A source whose match never comes is reported on its own after the window.
func TestOneSourceAlone(t *testing.T) {
	k := realKill(t)
	t.Run("counters only (kernel log lost)", func(t *testing.T) {
		r, out := newTest(t, Config{})
		r.Send(counterEvent(k, 4242))
		ev := waitN(t, out, 1)[0]
		if ev.Processes[0].Pid != 4242 || ev.Reason != event.CgroupOOM {
			t.Fatalf("%+v", ev)
		}
	})
	t.Run("kernel log only (a cgroup the guard does not count)", func(t *testing.T) {
		r, out := newTest(t, Config{Hostname: "node-1"})
		r.Kernel(k)
		ev := waitN(t, out, 1)[0]
		if ev.Reason != event.CgroupOOM || ev.ProcCgroup != memRoot+k.TaskMemcg || ev.Hostname != "node-1" || ev.Processes[0].Pid != k.Pid {
			t.Fatalf("%+v", ev)
		}
	})
	t.Run("system OOM", func(t *testing.T) {
		r, out := newTest(t, Config{Scope: memRoot + "/somewhere/else"})
		g := k
		g.Global, g.Memcg, g.OOMMemcg, g.Reason = true, false, "", "Out of memory"
		r.Kernel(g)
		ev := waitN(t, out, 1)[0]
		if ev.Reason != event.SystemOOM || !strings.HasPrefix(ev.Message, "system OOM") {
			t.Fatalf("%+v", ev)
		}
	})
	t.Run("rate-limited summary: a kill line alone, no counter", func(t *testing.T) {
		r, out := newTest(t, Config{Scope: memRoot + "/somewhere/else"})
		bare := k
		bare.TaskMemcg, bare.OOMMemcg = "", ""
		r.Kernel(bare)
		waitN(t, out, 0)
	})
	t.Run("memcg kill outside the guarded sub-tree", func(t *testing.T) {
		r, out := newTest(t, Config{Scope: memRoot + "/somewhere/else"})
		r.Kernel(k)
		waitN(t, out, 0)
	})
}

// The guard's own actions pass straight through.
func TestGuardEventsPassThrough(t *testing.T) {
	r, out := newTest(t, Config{})
	r.Send(event.Event{Reason: event.KillProcess, Message: "killed 1(x)"})
	if ev := waitN(t, out, 1)[0]; ev.Reason != event.KillProcess || ev.Message != "killed 1(x)" {
		t.Fatalf("%+v", ev)
	}
}

// The seed-003 case: a container's child killed while the container runs on.
func TestChildOOMClassification(t *testing.T) {
	const cid = "be62495eb02beef730005b50c8e0e97bc9c8fc5e8afd9796e91e5a39fd28765e"
	container := memRoot + "/docker/" + cid
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
			r, out := newTest(t, Config{Procs: func(cg string) ([]int, error) {
				if cg != tc.cgroup {
					t.Errorf("asked for the processes of %s, want %s", cg, tc.cgroup)
				}
				return tc.left, nil
			}})
			r.Send(event.Event{Reason: event.CgroupOOM, ProcCgroup: tc.cgroup, OOMCgroup: tc.cgroup,
				Processes: []event.Process{{Pid: 7936, Comm: "dd", PidInNS: tc.pidInNS}}, Killed: "7936(dd) "})
			ev := waitN(t, out, 1)[0]
			if ev.Reason != tc.want {
				t.Fatalf("reason %s, want %s", ev.Reason, tc.want)
			}
			if strings.Contains(tc.cgroup, "/docker/") && (ev.ContainerID != cid || ev.Runtime != "docker") {
				t.Fatalf("identity %+v", ev.Identity)
			}
		})
	}
}

// A runtime slower than a second still names the event's pod (on a busy
// cgroup v2 node containerd took longer than that for a container it was
// restarting, and the Event went on the Node for want of the pod's name).
func TestSlowRuntimeStillNames(t *testing.T) {
	const cid = "be62495eb02beef730005b50c8e0e97bc9c8fc5e8afd9796e91e5a39fd28765e"
	slow := inspectorFunc(func(ctx context.Context, id identity.ID) (identity.Info, error) {
		select {
		case <-time.After(1500 * time.Millisecond):
		case <-ctx.Done():
			return identity.Info{}, ctx.Err()
		}
		return identity.Info{Identity: event.Identity{ContainerName: "app", PodName: "leak", PodNamespace: "default"}}, nil
	})
	r, out := newTest(t, Config{Inspector: slow})
	r.Send(event.Event{Reason: event.KillContainer, ProcCgroup: memRoot + "/docker/" + cid, Killed: "1(x) "})
	if ev := waitN(t, out, 1)[0]; ev.PodName != "leak" || ev.ContainerName != "app" {
		t.Fatalf("identity %+v: want the slow runtime's names", ev.Identity)
	}
}

type inspectorFunc func(ctx context.Context, id identity.ID) (identity.Info, error)

func (f inspectorFunc) Inspect(ctx context.Context, id identity.ID) (identity.Info, error) {
	return f(ctx, id)
}

// A full queue drops and counts; Send never blocks.
func TestSendNeverBlocks(t *testing.T) {
	block := make(chan struct{})
	r := New(Config{MemRoot: memRoot, QueueSize: 2, Window: time.Hour}, stuckSink(block))
	defer func() { close(block); r.Stop() }()
	start := time.Now()
	for i := 0; i < 1000; i++ {
		r.Send(event.Event{Reason: event.KillProcess})
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("1000 Sends took %v", d)
	}
	if r.Dropped() == 0 {
		t.Fatal("nothing dropped with a queue of 2")
	}
}

// stuckSink blocks every Send until block is closed: a sink far slower than
// the kills.
type stuckSink chan struct{}

func (s stuckSink) Send(event.Event) { <-s }

// A system OOM kill is charged to the victim cgroup's kill counter too,
// without an OOM of that cgroup, so the guard counts it only at the
// cgroup's next own OOM, one kill too many: that extra counter kill, which
// no kernel-log record matches, is the system OOM kill already reported.
func TestSystemOOMKillCountedAgainLater(t *testing.T) {
	k := realKill(t)
	global := k
	global.Global, global.Memcg, global.OOMMemcg, global.Reason = true, false, "", "Out of memory"
	global.Pid = k.Pid + 1
	for _, tc := range []struct {
		name        string
		globalNamed bool // the guard saw the system OOM's victim go
		logged      bool // the cgroup OOM's own kernel-log record came
	}{
		{"own kill logged", false, true},
		{"own kill's record lost", false, false},
		{"system OOM's victim named, own kill logged", true, true},
		{"system OOM's victim named, own kill's record lost", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, out := newTest(t, Config{Scope: memRoot + k.TaskMemcg})
			r.Kernel(global)
			if ev := waitN(t, out, 1)[0]; ev.Reason != event.SystemOOM {
				t.Fatalf("%+v", ev)
			}
			// The cgroup's own OOM later: its counter moved by two.
			extra := 0
			if tc.globalNamed {
				extra = global.Pid
			}
			r.Send(counterEvent(k, k.Pid))
			r.Send(counterEvent(k, extra))
			if tc.logged {
				r.Kernel(k)
			}
			evs := waitN(t, out, 2)
			if ev := evs[1]; ev.Reason != event.CgroupOOM || len(ev.Processes) != 1 || ev.Processes[0].Pid != k.Pid {
				t.Fatalf("%+v", ev)
			}
			// Only once: more counter kills there are kills of their own.
			r.Send(counterEvent(k, 4242))
			r.Send(counterEvent(k, 0))
			evs = waitN(t, out, 4)
			if evs[2].Processes[0].Pid != 4242 || len(evs[3].Processes) != 0 || evs[3].Reason != event.CgroupOOM {
				t.Fatalf("%+v", evs[2:])
			}
		})
	}
}
