package guard

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/kill"
)

const (
	mib      = 1 << 20
	fLimit   = 100 * mib // threshold 98 MiB, early threshold 93 MiB
	fAbove   = 99 * mib
	fBelow   = 50 * mib
	bigPid   = 101
	smallPid = 102
)

// The decision loop's edge cases, on a fake kernel: a crossing is
// dispatched as the kernel's notification would be, timers run when the
// test moves the clock, and what the loop did is read off the fake.
func TestStateMachine(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy Policy
		// early crosses the early threshold first, where the kill is
		// prepared; setup runs before the crossing; then the crossing;
		// then after.
		early bool
		setup func(k *fakeKernel, c *cg)
		after func(t *testing.T, g *Guard, k *fakeKernel, c *cg)
		// the victims the guard killed, in order, and the actions it reported
		killed  []int
		reasons []event.Reason
	}{
		{name: "kills the top scorer", killed: []int{bigPid}, reasons: []event.Reason{event.KillProcess}},
		{name: "kills the victim prepared at the early threshold", early: true,
			setup: func(k *fakeKernel, c *cg) { k.procs[bigPid].Status.RssAnonKB += 1 << 10 }, // it grew
			after: func(t *testing.T, g *Guard, k *fakeKernel, c *cg) {
				if c.prep != nil {
					t.Error("the preparation outlived its kill")
				}
			},
			killed: []int{bigPid}, reasons: []event.Reason{event.KillProcess}},
		{name: "a prepared victim that has not grown is not killed: the one that grew is", early: true,
			setup: func(k *fakeKernel, c *cg) {
				k.procs[smallPid].Status.RssAnonKB, k.procs[smallPid].OOMScore = 80<<10, 80<<10
			},
			killed: []int{smallPid}, reasons: []event.Reason{event.KillProcess}},
		{name: "never an exempt process",
			setup:  func(k *fakeKernel, c *cg) { k.procs[bigPid].OOMScoreAdj = kill.OOMScoreAdjMin },
			killed: []int{smallPid}, reasons: []event.Reason{event.KillProcess}},
		{name: "below the threshold: nothing",
			setup: func(k *fakeKernel, c *cg) { k.cgroups[c.rel].usage = fBelow }},
		{name: "limit raised between notification and look: re-armed, nothing killed",
			setup: func(k *fakeKernel, c *cg) { k.cgroups[c.rel].limit = 2 * fLimit },
			after: func(t *testing.T, g *Guard, k *fakeKernel, c *cg) {
				if !c.registering {
					t.Error("no new registration for the raised limit")
				}
			}},
		{name: "cgroup gone at the look: forgotten",
			setup: func(k *fakeKernel, c *cg) { k.cgroups[c.rel].gone = true },
			after: func(t *testing.T, g *Guard, k *fakeKernel, c *cg) {
				if g.known[c.rel] != nil || c.guarded() {
					t.Error("a removed cgroup is still known")
				}
			}},
		{name: "victim exited before the signal: the next is killed at the recheck",
			setup: func(k *fakeKernel, c *cg) { k.killErrs[bigPid] = kill.ErrGone },
			after: func(t *testing.T, g *Guard, k *fakeKernel, c *cg) {
				k.set(func() { delete(k.killErrs, bigPid); k.procs[bigPid].alive = false })
				g.runTimers(k.advance(g.cfg.RecheckInterval))
			},
			killed: []int{smallPid}, reasons: []event.Reason{event.KillProcess}},
		{name: "kill refused: nothing reported, looked at again",
			setup: func(k *fakeKernel, c *cg) { k.killErrs[bigPid] = unix.EPERM; k.killErrs[smallPid] = unix.EPERM },
			after: func(t *testing.T, g *Guard, k *fakeKernel, c *cg) {
				if want := k.now.Add(g.cfg.RecheckInterval); !c.recheckAt.Equal(want) {
					t.Errorf("recheck at %v, want %v", c.recheckAt, want)
				}
			}},
		{name: "much page cache: stands down and asks for reclaim",
			setup: func(k *fakeKernel, c *cg) { k.cgroups[c.rel].reclaimable = 20 * mib },
			after: func(t *testing.T, g *Guard, k *fakeKernel, c *cg) {
				select {
				case rel := <-g.reclaims:
					if rel != c.rel {
						t.Errorf("reclaim asked of %s", rel)
					}
				default:
					t.Error("no reclaim asked for")
				}
				if c.recheckAt.IsZero() {
					t.Error("no recheck while standing down")
				}
			}},
		{name: "one spike, one kill: while the victim dies the cgroup cools down; once it is gone a crossing is a new spike",
			after: func(t *testing.T, g *Guard, k *fakeKernel, c *cg) {
				g.dispatch(c.thw.Fd(), k.advance(time.Millisecond))
				if n := len(k.killed); n != 1 {
					t.Fatalf("%d kills while the victim dies, want 1", n)
				}
				k.set(func() { k.procs[bigPid].alive = false }) // reaped
				g.dispatch(c.thw.Fd(), k.advance(time.Millisecond))
			},
			killed: []int{bigPid, smallPid}, reasons: []event.Reason{event.KillProcess, event.KillProcess}},
		{name: "a victim still dying after --guard-ms holds off another kill, as the kernel's OOM killer waits",
			after: func(t *testing.T, g *Guard, k *fakeKernel, c *cg) {
				g.runTimers(k.advance(g.cfg.GuardInterval))
				if c.stuck == 0 {
					t.Error("not waiting for the dying victim")
				}
			},
			killed: []int{bigPid}, reasons: []event.Reason{event.KillProcess}},
		{name: "noop: reported once per episode", policy: PolicyNoop,
			after: func(t *testing.T, g *Guard, k *fakeKernel, c *cg) {
				g.runTimers(k.advance(g.cfg.GuardInterval)) // still above: same episode
				k.set(func() { k.cgroups[c.rel].usage = fBelow })
				g.dispatch(c.thw.Fd(), k.advance(time.Millisecond))
				k.set(func() { k.cgroups[c.rel].usage = fAbove })
				g.dispatch(c.thw.Fd(), k.advance(time.Millisecond)) // a new episode
			},
			reasons: []event.Reason{event.WouldKill, event.WouldKill}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Policy = PolicyProcess
			if tc.policy != "" {
				cfg.Policy = tc.policy
			}
			g, k := newFakeGuard(t, cfg)
			c := k.guardNew(g, "/pod", fLimit, fBelow)
			k.proc("/pod", bigPid, 60<<10, 0)
			k.proc("/pod", smallPid, 20<<10, 0)
			if tc.early {
				k.set(func() { k.cgroups["/pod"].usage = 95 * mib })
				g.dispatch(c.earlyw.Fd(), k.advance(time.Millisecond))
				if c.prep == nil || c.prep.target.Inspected().Pid != bigPid {
					t.Fatalf("nothing prepared at the early threshold: %+v", c.prep)
				}
			}
			k.set(func() {
				k.cgroups["/pod"].usage = fAbove
				if tc.setup != nil {
					tc.setup(k, c)
				}
			})
			g.dispatch(c.thw.Fd(), k.advance(time.Millisecond))
			if tc.after != nil {
				tc.after(t, g, k, c)
			}
			if !equal(k.killed, tc.killed) {
				t.Errorf("killed %v, want %v", k.killed, tc.killed)
			}
			var reasons []event.Reason
			for _, a := range k.acted {
				reasons = append(reasons, a.Reason)
			}
			if !equal(reasons, tc.reasons) {
				t.Errorf("reported %v, want %v", reasons, tc.reasons)
			}
			for _, a := range k.acted {
				if a.OOMCgroup != g.absPath("/pod") || a.Usage < a.Threshold || a.Limit != fLimit || len(a.Killed) != 1 {
					t.Errorf("action %+v", a)
				}
			}
		})
	}
}

// A preparation (the slow part of a kill) gives way to crossings that come
// meanwhile: another cgroup's victim is killed before the preparation
// ends; a crossing of the cgroup being prepared is acted on at once, and
// the preparation, stale, is dropped.
func TestPreparationGivesWayToCrossings(t *testing.T) {
	for _, tc := range []struct {
		name     string
		crossing string // whose crossing comes during /a's preparation
		killed   []int
		prepared bool // /a keeps a preparation
	}{
		{"another cgroup's crossing", "/b", []int{201}, true},
		{"its own crossing", "/a", []int{bigPid}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Policy = PolicyProcess
			g, k := newFakeGuard(t, cfg)
			a := k.guardNew(g, "/a", fLimit, fBelow)
			b := k.guardNew(g, "/b", fLimit, fBelow)
			k.proc("/a", bigPid, 60<<10, 0)
			k.proc("/b", 201, 60<<10, 0)
			crossing := map[string]*cg{"/a": a, "/b": b}[tc.crossing]
			k.set(func() {
				k.cgroups["/a"].usage = 95 * mib
				k.cgroups[tc.crossing].usage = fAbove
				k.ready = []int{crossing.thw.Fd()} // arrives while /a is prepared
			})
			g.dispatch(a.earlyw.Fd(), k.advance(time.Millisecond))
			if !equal(k.killed, tc.killed) {
				t.Errorf("killed %v during the preparation, want %v", k.killed, tc.killed)
			}
			if got := a.prep != nil; got != tc.prepared {
				t.Errorf("/a prepared: %v, want %v", got, tc.prepared)
			}
			if len(k.acted) != 1 {
				t.Errorf("%d actions reported, want 1", len(k.acted))
			}
		})
	}
}

// The kernel's own kills are counted once each, named by the process seen
// before and gone after; an OOM notification that killed nothing reports
// nothing.
func TestKernelKillCounting(t *testing.T) {
	for _, tc := range []struct {
		name   string
		kill   bool // the kernel killed the big one
		victim int  // want named; 0: no fact at all
	}{
		{"a kill, its victim named", true, bigPid},
		{"an OOM that killed nothing", false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Policy = PolicyNoop
			g, k := newFakeGuard(t, cfg)
			c := k.guardNew(g, "/pod", fLimit, fBelow)
			k.proc("/pod", bigPid, 60<<10, 0)
			k.proc("/pod", smallPid, 20<<10, 0)
			g.dispatch(c.oomw.Fd(), k.now)
			if tc.kill {
				k.set(func() { k.procs[bigPid].alive = false; k.cgroups["/pod"].oomKills = 1 })
			}
			for _, d := range oomCheckDelays {
				g.runTimers(k.now.Add(d))
			}
			switch {
			case tc.victim == 0 && len(k.counted) != 0:
				t.Fatalf("facts %+v for an OOM that killed nothing", k.counted)
			case tc.victim != 0 && (len(k.counted) != 1 || len(k.counted[0].Victims) != 1 || k.counted[0].Victims[0].Pid != tc.victim):
				t.Fatalf("facts %+v, want one naming pid %d", k.counted, tc.victim)
			}
		})
	}
}

// A kernel memory.oom.group kill is ONE fact per cgroup whose count
// moved (the container), naming every process it took, however many
// threads the kernel counted: also when the container's cgroup goes
// before the last check (its runtime removes it once all is dead), and
// when the guarded cgroup is that container itself, and when the kernel
// goes on killing (and counting) the group's processes after the report
// (a slow console). Without the group (v1 has none), each kill is a fact
// of its own.
func TestKernelGroupKillCountedOnce(t *testing.T) {
	const ctr = "/pod/ctr"
	pids := []int{bigPid, smallPid, 103}
	for _, tc := range []struct {
		name     string
		group    bool
		notified string // the guarded cgroup whose OOM notification comes
		goneAt   int    // ctr's cgroup removed after this many checks; 0: never
		later    bool   // the count moves on after the report, the container's watch fires
		want     int    // facts
	}{
		{"group: one fact at the last check", true, "/pod", 0, false, 1},
		{"group: one fact when the container's cgroup goes first", true, "/pod", 1, false, 1},
		{"group: the guarded container's own cgroup goes", true, ctr, 2, false, 1},
		{"group: the scan counts on after the report", true, "/pod", 0, true, 1},
		{"no group: one fact per kill", false, "/pod", 0, false, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Policy = PolicyNoop
			g, k := newFakeGuard(t, cfg)
			k.guardNew(g, "/pod", fLimit, fBelow)
			k.guardNew(g, ctr, fLimit, fBelow)
			k.set(func() { k.cgroups[ctr].oomGroup = tc.group })
			for i, pid := range pids {
				k.proc(ctr, pid, uint64(60-20*i)<<10, 0)
			}
			c := g.known[tc.notified]
			g.dispatch(c.oomw.Fd(), k.now)
			k.set(func() {
				for _, pid := range pids {
					k.procs[pid].alive = false
				}
				// The group scan counts every thread it signals.
				k.cgroups[ctr].oomKills = map[bool]uint64{true: 7, false: 3}[tc.group]
				if tc.group {
					k.cgroups[ctr].groupKills = 1
				}
			})
			checks := func() {
				for i, d := range oomCheckDelays {
					if i == tc.goneAt && tc.goneAt > 0 {
						if err := os.Remove(filepath.Join(k.root, ctr)); err != nil {
							t.Fatal(err)
						}
						k.set(func() { k.cgroups[ctr].gone = true })
						g.forgetTree(ctr) // as inotify tells it
					}
					g.runTimers(k.now.Add(d))
				}
			}
			checks()
			if tc.later {
				k.set(func() { k.cgroups[ctr].oomKills += 2 })
				k.advance(time.Second)
				g.dispatch(g.known[ctr].oomw.Fd(), k.now) // its own oom_kill moved
				checks()
			}
			if len(k.counted) != tc.want {
				t.Fatalf("%d facts, want %d: %+v", len(k.counted), tc.want, k.counted)
			}
			named := map[int]bool{}
			for _, f := range k.counted {
				if f.ProcCgroup != g.absPath(ctr) || (f.OOMGroup != "") != tc.group || tc.group && f.OOMGroup != g.absPath(ctr) {
					t.Errorf("fact %+v: want the kill in %s, group %v", f, ctr, tc.group)
				}
				for _, p := range f.Victims {
					named[p.Pid] = true
				}
			}
			for _, pid := range pids {
				if !named[pid] {
					t.Errorf("pid %d not named: %+v", pid, k.counted)
				}
			}
			if !tc.group && len(k.counted) == 3 && len(k.counted[0].Victims) != 1 {
				t.Errorf("a single kill names %d processes", len(k.counted[0].Victims))
			}
		})
	}
}

func equal[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
