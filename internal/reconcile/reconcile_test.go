package reconcile

import (
	"bufio"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/kmsg"
)

// sampleRecords are the records of one of kmsg's raw /dev/kmsg samples
// (testdata): the kernel's own words, not made-up records.
func sampleRecords(t *testing.T, name string) []kmsg.Record {
	t.Helper()
	f, err := os.Open("../kmsg/testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var recs []kmsg.Record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "#") {
			continue
		}
		if r, err := kmsg.ParseRecord(sc.Bytes()); err == nil {
			recs = append(recs, r)
		}
	}
	return recs
}

// realKill is the kill this project's own test machine logged.
func realKill(t *testing.T) kmsg.Kill {
	t.Helper()
	p := kmsg.NewParser()
	for _, r := range sampleRecords(t, "self-linux-6.18-cgroup-v1.kmsg") {
		if k, ok := p.Feed(r); ok {
			return k
		}
	}
	t.Fatal("no kill in the sample")
	return kmsg.Kill{}
}

const memRoot = "/sys/fs/cgroup/memory"

// t0 is the tests' clock: the matcher reads none, every call says when.
var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

const window = 300 * time.Millisecond

func newMatcherTest(cfg Config) *matcher {
	cfg.MemRoot = memRoot
	cfg.Window = window
	return newMatcher(cfg)
}

// counterKill is what the guard's counters report; pid 0 when the
// processes seen before did not tell the victim.
func counterKill(k kmsg.Kill, pid int) event.Event {
	c := event.CounterKill{ProcCgroup: memRoot + k.TaskMemcg, OOMCgroup: memRoot + k.TaskMemcg}
	if pid > 0 {
		c.Victims = []event.Process{{Pid: pid, Comm: k.Comm, AnonRSSKB: 1, PidInNS: pid}}
	}
	return fromCounter(c)
}

// run feeds the matcher its inputs at the given offsets from t0, then
// expires what is left one window after the last, and returns every event
// that came out.
func run(m *matcher, steps ...step) []event.Event {
	var out []event.Event
	var last time.Duration
	for _, s := range steps {
		now := t0.Add(s.at)
		out = append(out, m.expire(now)...)
		switch {
		case s.counter != nil:
			out = append(out, m.counted(*s.counter, now)...)
		case s.kill != nil:
			out = append(out, m.kernel(*s.kill, now)...)
		}
		last = s.at
	}
	return append(out, m.expire(t0.Add(last+window))...)
}

type step struct {
	at      time.Duration
	counter *event.Event
	kill    *kmsg.Kill
}

func counted(at time.Duration, ev event.Event) step { return step{at: at, counter: &ev} }
func logged(at time.Duration, k kmsg.Kill) step     { return step{at: at, kill: &k} }

// One kill seen by both sources is reported once, with the kernel's
// figures, whichever source speaks first and however late within the
// window.
func TestBothSourcesOneEvent(t *testing.T) {
	k := realKill(t)
	bare := k // the summary rate-limited: a kill line without cgroups
	bare.TaskMemcg, bare.OOMMemcg = "", ""
	late := window - time.Millisecond
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"counter first, victim known", []step{counted(0, counterKill(k, k.Pid)), logged(late, k)}},
		{"kernel first, victim known", []step{logged(0, k), counted(late, counterKill(k, k.Pid))}},
		{"counter first, victim unknown", []step{counted(0, counterKill(k, 0)), logged(late, k)}},
		{"kernel first, victim unknown", []step{logged(0, k), counted(late, counterKill(k, 0))}},
		{"summary rate-limited, kernel first", []step{logged(0, bare), counted(late, counterKill(k, k.Pid))}},
		{"summary rate-limited, counter first", []step{counted(0, counterKill(k, k.Pid)), logged(late, bare)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs := run(newMatcherTest(Config{Scope: memRoot + k.TaskMemcg}), tc.steps...)
			if len(evs) != 1 {
				t.Fatalf("%d events, want 1: %+v", len(evs), evs)
			}
			ev, p := evs[0], evs[0].Processes[0] // merged: the kernel's anon-rss, not the counter's
			wantOOM := memRoot + k.OOMMemcg
			if strings.Contains(tc.name, "rate-limited") {
				wantOOM = memRoot + k.TaskMemcg // the bare line names no limit
			}
			if ev.Reason != event.CgroupOOM || p.Pid != k.Pid || p.Comm != k.Comm || p.AnonRSSKB != k.AnonRSSKB ||
				ev.OOMCgroup != wantOOM || ev.Killed != event.KilledField(ev.Processes) {
				t.Fatalf("merged event %+v from kill %+v", ev, k)
			}
		})
	}
}

// A match that comes after the window is too late: two events.
func TestMatchAfterTheWindow(t *testing.T) {
	k := realKill(t)
	evs := run(newMatcherTest(Config{Scope: memRoot + k.TaskMemcg}), counted(0, counterKill(k, k.Pid)), logged(window, k))
	if len(evs) != 2 {
		t.Fatalf("%d events, want 2 (the counter's alone, then the log's): %+v", len(evs), evs)
	}
}

// A source whose match never comes is reported on its own after the window.
func TestOneSourceAlone(t *testing.T) {
	k := realKill(t)
	global := k
	global.Global, global.Memcg, global.OOMMemcg, global.Reason = true, false, "", "Out of memory"
	bare := k
	bare.TaskMemcg, bare.OOMMemcg = "", ""
	for _, tc := range []struct {
		name  string
		scope string
		step  step
		want  event.Reason // "": no event
		pid   int
	}{
		{"counters only (kernel log lost)", "", counted(0, counterKill(k, 4242)), event.CgroupOOM, 4242},
		{"kernel log only (a cgroup the guard does not count)", "", logged(0, k), event.CgroupOOM, k.Pid},
		{"system OOM", memRoot + "/somewhere/else", logged(0, global), event.SystemOOM, k.Pid},
		{"rate-limited summary: a kill line alone, no counter", memRoot + "/somewhere/else", logged(0, bare), "", 0},
		{"memcg kill outside the guarded sub-tree", memRoot + "/somewhere/else", logged(0, k), "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMatcherTest(Config{Scope: tc.scope})
			if evs := run(m, tc.step); tc.want == "" {
				if len(evs) != 0 {
					t.Fatalf("want no event, got %+v", evs)
				}
			} else if len(evs) != 1 || evs[0].Reason != tc.want || evs[0].Processes[0].Pid != tc.pid {
				t.Fatalf("want one %s of pid %d, got %+v", tc.want, tc.pid, evs)
			}
		})
	}
}

// Nothing waits longer than the window: at window-1 it still waits, at
// the window it is out.
func TestWindowIsExact(t *testing.T) {
	k := realKill(t)
	m := newMatcherTest(Config{})
	if out := m.counted(counterKill(k, 4242), t0); len(out) != 0 {
		t.Fatal(out)
	}
	if out := m.expire(t0.Add(window - time.Nanosecond)); len(out) != 0 {
		t.Fatalf("out before the window ended: %+v", out)
	}
	if out := m.expire(t0.Add(window)); len(out) != 1 {
		t.Fatalf("%d out at the window's end, want 1", len(out))
	}
}

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
			m := newMatcherTest(Config{Scope: memRoot + k.TaskMemcg})
			if evs := run(m, logged(0, global)); len(evs) != 1 || evs[0].Reason != event.SystemOOM {
				t.Fatalf("%+v", evs)
			}
			// The cgroup's own OOM later: its counter moved by two.
			extra := 0
			if tc.globalNamed {
				extra = global.Pid
			}
			steps := []step{counted(time.Second, counterKill(k, k.Pid)), counted(time.Second, counterKill(k, extra))}
			if tc.logged {
				steps = append(steps, logged(time.Second, k))
			}
			evs := run(m, steps...)
			if len(evs) != 1 || evs[0].Reason != event.CgroupOOM || len(evs[0].Processes) != 1 || evs[0].Processes[0].Pid != k.Pid {
				t.Fatalf("want the cgroup's own kill alone, got %+v", evs)
			}
			// Only once: more counter kills there are kills of their own.
			evs = run(m, counted(2*time.Second, counterKill(k, 4242)), counted(2*time.Second, counterKill(k, 0)))
			if len(evs) != 2 || evs[0].Processes[0].Pid != 4242 || len(evs[1].Processes) != 0 || evs[1].Reason != event.CgroupOOM {
				t.Fatalf("%+v", evs)
			}
		})
	}
}

// The victim cgroup's counter, which the guard now hears move at once,
// and the kernel log's record of a system OOM kill are one SystemOOM
// event, never a CgroupOOM.
func TestSystemOOMKillCountedAtOnce(t *testing.T) {
	k := realKill(t)
	global := k
	global.Global, global.Memcg, global.OOMMemcg, global.Reason = true, false, "", "Out of memory"
	for _, steps := range [][]step{
		{logged(0, global), counted(50*time.Millisecond, counterKill(k, k.Pid))},
		{counted(0, counterKill(k, k.Pid)), logged(time.Millisecond, global)},
	} {
		evs := run(newMatcherTest(Config{Scope: memRoot + k.TaskMemcg}), steps...)
		if len(evs) != 1 || evs[0].Reason != event.SystemOOM || evs[0].Processes[0].Pid != k.Pid {
			t.Fatalf("events %+v, want one SystemOOM", evs)
		}
	}
}

// groupKill is a kernel memory.oom.group kill of a container of three
// processes as the kmsg parser gives it (the shape of its real sample
// linux-mm-2019-oom-group-5.0): the first victim's line with the report's
// cgroups, then one line per member of the group scan, which names the
// group, not the member's own cgroup. And the counters' one fact of it,
// naming the processes seen before and gone after (want: all three).
func groupKill(named ...int) (ctr string, lines []kmsg.Kill, fact event.Event) {
	const pod, group = "/kubepods/burstable/pod1", "/kubepods/burstable/pod1/ctr"
	lines = []kmsg.Kill{
		{Pid: 9188, Comm: "dd", Memcg: true, OOMMemcg: pod, TaskMemcg: group, AnonRSSKB: 10324, Enriched: true},
		{Pid: 9182, Comm: "sh", Memcg: true, OOMMemcg: pod, GroupKill: true, OOMGroup: group, AnonRSSKB: 76},
		{Pid: 9183, Comm: "worker", Memcg: true, OOMMemcg: pod, GroupKill: true, OOMGroup: group, AnonRSSKB: 6228},
	}
	c := event.CounterKill{OOMCgroup: memRoot + pod, ProcCgroup: memRoot + group, OOMGroup: memRoot + group}
	for _, pid := range named {
		c.Victims = append(c.Victims, event.Process{Pid: pid, Comm: "seen", Cgroup: memRoot + group})
	}
	return memRoot + group, lines, fromCounter(c)
}

// A kernel memory.oom.group kill is ONE event of the whole container,
// whichever source speaks first, with each process's memory at death from
// its line of the kernel log: also when a line comes after the event went
// out (too late for its figures, not a kill of its own), when the
// counters named none of its processes, and when the group scan prints a
// thread of one of them (its own thread id: not a process) in a report
// without a task table (TestGroupKillFromTheKernelLog has one). A line
// gives the rest one more window.
func TestGroupKillOneEvent(t *testing.T) {
	ctr, lines, fact := groupKill(9188, 9182, 9183)
	_, _, unnamed := groupKill()
	thread := lines[2]
	thread.Pid = 9184 // a thread of 9183: the same mm, the same figures
	late := window - time.Millisecond
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"counter first", []step{counted(0, fact), logged(1, lines[0]), logged(2, lines[1]), logged(3, lines[2])}},
		{"kernel log first", []step{logged(0, lines[0]), logged(1, lines[1]), logged(2, lines[2]), counted(50*time.Millisecond, fact)}},
		{"the counter between the lines", []step{logged(0, lines[0]), counted(late, fact), logged(late+1, lines[1]), logged(late+2, lines[2])}},
		{"a line after the event went out", []step{counted(0, fact), logged(1, lines[0]), logged(2, lines[1]), logged(2*time.Millisecond+window+time.Millisecond, lines[2])}},
		{"the counters named none", []step{logged(0, lines[0]), logged(1, lines[1]), logged(2, lines[2]), counted(late, unnamed)}},
		{"a thread's line", []step{logged(0, lines[0]), logged(1, lines[1]), logged(2, lines[2]), logged(3, thread), counted(late, fact)}},
		{"a thread's line, counter first", []step{counted(0, fact), logged(1, lines[0]), logged(2, lines[1]), logged(3, lines[2]), logged(4, thread)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs := run(newMatcherTest(Config{Scope: memRoot + "/kubepods"}), tc.steps...)
			if len(evs) != 1 {
				t.Fatalf("%d events, want one for the group: %+v", len(evs), evs)
			}
			ev := evs[0]
			if ev.Reason != event.CgroupOOM || ev.OOMGroup != ctr || ev.ProcCgroup != ctr || ev.OOMCgroup != memRoot+"/kubepods/burstable/pod1" || len(ev.Processes) != 3 {
				t.Fatalf("event %+v: want the group's three processes, the pod's limit", ev)
			}
			for _, k := range lines {
				if strings.Contains(tc.name, "after the event") && k.Pid == lines[2].Pid {
					continue
				}
				i := slices.IndexFunc(ev.Processes, func(p event.Process) bool { return p.Pid == k.Pid })
				if i < 0 || ev.Processes[i].Comm != k.Comm || ev.Processes[i].AnonRSSKB != k.AnonRSSKB {
					t.Errorf("pid %d: processes %+v, want its kernel-log figures", k.Pid, ev.Processes)
				}
			}
			if ev.Killed != event.KilledField(ev.Processes) {
				t.Errorf("killed %q", ev.Killed)
			}
		})
	}
}

// vmGroupKill is the first group kill of the v2 VM's sample (kmsg's
// testdata): what the parser gives of its kernel log, at offsets from the
// first, and the processes the kernel killed: the hog 115 and the idle
// members 101 and 102. The scan also printed 117 (the hog's thread) and
// 109 (102's): the report's task table tells they are threads.
func vmGroupKill(t *testing.T) (group string, at []time.Duration, kills []kmsg.Kill, killed []int) {
	t.Helper()
	p := kmsg.NewParser()
	reports := 0
	for _, r := range sampleRecords(t, "self-linux-6.1-cgroup-v2-oom-group.kmsg") {
		if strings.Contains(r.Text, "invoked oom-killer") {
			if reports++; reports > 1 {
				break
			}
		}
		if k, ok := p.Feed(r); ok {
			if len(kills) == 0 {
				group = memRoot + k.TaskMemcg
			}
			kills = append(kills, k)
			at = append(at, k.Monotonic-kills[0].Monotonic)
		}
	}
	if len(kills) == 0 || at[len(at)-1] > window/4 {
		t.Fatalf("sample: kills %+v at %v", kills, at)
	}
	return group, at, kills, []int{115, 101, 102}
}

// A kernel group kill is one event naming every process the kernel
// killed, with its figures at death, whichever way the counters' news
// and the kernel log's lines interleave: the orderings the v2 VM showed.
// The guard names what it saw before the kill: none of them when it
// looked after all had died (every line, threads' included, was a
// process then: 4 named), or some (an idle member died before it looked:
// its line was taken for a thread, 2 named); and on a starved node its
// news came 360 ms after the lines, which had gone out alone (2 events).
func TestGroupKillFromTheKernelLog(t *testing.T) {
	group, at, kills, killed := vmGroupKill(t)
	fact := func(named ...int) event.Event {
		c := event.CounterKill{OOMCgroup: group, ProcCgroup: group, OOMGroup: group}
		for _, pid := range named {
			c.Victims = append(c.Victims, event.Process{Pid: pid, Comm: "guard.test", Cgroup: group})
		}
		return fromCounter(c)
	}
	lines := func(from time.Duration) []step {
		var s []step
		for i, k := range kills {
			s = append(s, logged(from+at[i], k))
		}
		return s
	}
	end := at[len(at)-1]
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"the counters named none, after the lines", append(lines(0), counted(end+50*time.Millisecond, fact()))},
		{"the counters named none, before the lines", append([]step{counted(0, fact())}, lines(time.Millisecond)...)},
		{"an idle member died before the guard looked", append(lines(0), counted(end+50*time.Millisecond, fact(115, 102)))},
		{"only the hog was seen, before the lines", append([]step{counted(0, fact(115))}, lines(time.Millisecond)...)},
		{"the counters between the lines", append(append(lines(0)[:1], counted(at[0]+time.Millisecond, fact(115))), lines(0)[1:]...)},
		{"the counters 360 ms after the lines", append(lines(0), counted(end+360*time.Millisecond, fact(115, 101, 102)))},
		{"the counters 2 s after the lines", append(lines(0), counted(end+2*time.Second, fact()))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs := run(newMatcherTest(Config{Scope: memRoot}), tc.steps...)
			if len(evs) != 1 {
				t.Fatalf("%d events, want one for the group: %+v", len(evs), evs)
			}
			ev := evs[0]
			if ev.OOMGroup != group || ev.ProcCgroup != group || len(ev.Processes) != len(killed) {
				t.Fatalf("event %+v: want the group's processes %v", ev, killed)
			}
			for _, pid := range killed {
				i := slices.IndexFunc(ev.Processes, func(p event.Process) bool { return p.Pid == pid })
				j := slices.IndexFunc(kills, func(k kmsg.Kill) bool { return k.Pid == pid })
				if i < 0 || j < 0 || ev.Processes[i].AnonRSSKB != kills[j].AnonRSSKB || ev.Processes[i].Comm != "guard.test" {
					t.Errorf("pid %d: processes %+v, want it with its kernel-log figures", pid, ev.Processes)
				}
			}
		})
	}
}
