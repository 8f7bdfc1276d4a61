package guard

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/kill"
	"golang.org/x/sys/unix"
)

// The hold's rules (hold.go) on a fake kernel: when a cgroup is held,
// when the kernel has it back, and what the record makes of a dead
// guard's hold. The real kernel's waiting tasks are shown in
// TestHoldMakesTheKernelWait and TestRespawningWorkload.
func TestHold(t *testing.T) {
	type want struct {
		held     bool // oom_kill_disable as the test ends
		guards   bool // c.held: the guard's own hold
		killed   []int
		released bool // handed back to the kernel's OOM killer
	}
	for _, tc := range []struct {
		name     string
		policy   Policy
		noRecord bool
		oldWait  bool // a kernel before 3.12
		setup    func(k *fakeKernel)
		// run after the cgroup is guarded; the tasks wait at the limit
		// when under is set (the kernel's OOM notification follows)
		under bool
		run   func(t *testing.T, g *Guard, k *fakeKernel, c *cg)
		want  want
	}{
		{name: "a guarded cgroup is held", want: want{held: true, guards: true}},
		{name: "not under noop", policy: PolicyNoop},
		{name: "not without a record to undo it by", noRecord: true},
		{name: "not before 3.12: the wait would hold the task's locks", oldWait: true},
		{name: "not the guard's own cgroup", setup: func(k *fakeKernel) { k.self = "/pod" }},
		{name: "not a cgroup above the guard's own", setup: func(k *fakeKernel) { k.self = "/pod/guard" }},
		{name: "a cgroup beside the guard's is", setup: func(k *fakeKernel) { k.self = "/other" }, want: want{held: true, guards: true}},
		{name: "nothing when the guard's own cgroup is unknown", setup: func(k *fakeKernel) { k.selfErr = errors.New("no memory cgroup") }},
		{name: "the operator's own oom_kill_disable is left set, and not the guard's",
			setup: func(k *fakeKernel) { k.cgroups["/pod"].oomKillDisable = true }, want: want{held: true}},
		{name: "a refused write: not held", setup: func(k *fakeKernel) { k.holdErr = unix.EINVAL }},
		{name: "the kernel's OOM under noop is no hold wait", policy: PolicyNoop, under: true},
		{name: "tasks waiting with a victim to kill: the guard kills and keeps the hold", under: true,
			want: want{held: true, guards: true, killed: []int{bigPid}}},
		{name: "tasks waiting and nothing the guard may kill: the kernel has them", under: true,
			setup: exemptAll,
			want:  want{guards: true, released: true}},
		{name: "tasks waiting and page cache the guard would stand down for: the kernel has them", under: true,
			setup: func(k *fakeKernel) { k.cgroups["/pod"].reclaimable = 20 * mib },
			want:  want{guards: true, released: true}},
		{name: "tasks waiting, the kill refused: the kernel has them", under: true,
			setup: func(k *fakeKernel) { k.killErrs[bigPid], k.killErrs[smallPid] = unix.EPERM, unix.EPERM },
			want:  want{guards: true, released: true}},
		{name: "above the threshold with nothing to kill but no task waiting: still held",
			setup: exemptAll,
			run: func(t *testing.T, g *Guard, k *fakeKernel, c *cg) {
				k.set(func() { k.cgroups["/pod"].usage = fAbove })
				g.dispatch(c.thw.Fd(), k.advance(time.Millisecond))
			},
			want: want{held: true, guards: true}},
		{name: "handed to the kernel for an episode, held again below the threshold", under: true,
			setup: exemptAll,
			run: func(t *testing.T, g *Guard, k *fakeKernel, c *cg) {
				k.set(func() { k.cgroups["/pod"].usage = fBelow })
				g.dispatch(c.thw.Fd(), k.advance(time.Millisecond))
			},
			want: want{held: true, guards: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Policy = PolicyProcess
			if tc.policy != "" {
				cfg.Policy = tc.policy
			}
			g, k := newFakeGuard(t, cfg)
			waits := &holdWaits{}
			g.metrics = waits
			g.kernel.OOMWait = !tc.oldWait
			state := filepath.Join(t.TempDir(), "state")
			if !tc.noRecord {
				var err error
				if g.records, err = openRecords(state); err != nil {
					t.Fatal(err)
				}
			}
			k.mkcg("/pod", fLimit, fBelow)
			k.proc("/pod", bigPid, 60<<10, 0)
			k.proc("/pod", smallPid, 20<<10, 0)
			if tc.setup != nil {
				k.set(func() { tc.setup(k) })
			}
			c := k.guardNew(g, "/pod", fLimit, fBelow)
			if tc.under {
				k.set(func() { k.cgroups["/pod"].usage, k.cgroups["/pod"].underOOM = fLimit, true })
				g.dispatch(c.oomw.Fd(), k.advance(time.Millisecond))
			}
			if tc.run != nil {
				tc.run(t, g, k, c)
			}
			var held bool
			k.set(func() { held = k.cgroups["/pod"].oomKillDisable })
			if held != tc.want.held || c.held != tc.want.guards || c.holdReleased != tc.want.released {
				t.Errorf("oom_kill_disable %v, the guard's %v, handed to the kernel %v; want %v, %v, %v",
					held, c.held, c.holdReleased, tc.want.held, tc.want.guards, tc.want.released)
			}
			if !equal(k.killed, tc.want.killed) {
				t.Errorf("killed %v, want %v", k.killed, tc.want.killed)
			}
			if want := b2i(tc.under && tc.want.guards); waits.n != want {
				t.Errorf("%d hold waits counted, want %d", waits.n, want)
			}
			if g.records != nil {
				if _, recorded := g.records.m[limitRecord{Path: g.absPath("/pod"), Setting: holdSetting}.key()]; recorded != c.held {
					t.Errorf("recorded %v, held %v", recorded, c.held)
				}
			}
			operators := tc.want.held && !tc.want.guards
			g.releaseAll()
			k.set(func() { held = k.cgroups["/pod"].oomKillDisable })
			if held != operators {
				t.Errorf("oom_kill_disable %v after the guard let go, want %v", held, operators)
			}
		})
	}
}

// exemptAll makes every process of the fake's /pod one the guard may not
// kill (oom_score_adj -1000).
func exemptAll(k *fakeKernel) {
	k.procs[bigPid].OOMScoreAdj, k.procs[smallPid].OOMScoreAdj = kill.OOMScoreAdjMin, kill.OOMScoreAdjMin
}

// holdWaits counts the guard's HoldWait metric.
type holdWaits struct {
	NopMetrics
	n int
}

func (h *holdWaits) HoldWait() { h.n++ }

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// A guard that died holding left oom_kill_disable 1 and its record: the
// next guard, held or not, takes it for the dead guard's and undoes it
// when it lets go; one whose record says somebody changed it since leaves
// theirs.
func TestDeadGuardsHoldUndone(t *testing.T) {
	for _, tc := range []struct {
		name      string
		hold      bool // the next guard holds
		changed   bool // oom_kill_disable no longer what the dead guard wrote
		wantAfter bool // oom_kill_disable after the next guard let go
	}{
		{"the next guard holds, and undoes it on stop", true, false, false},
		{"the next guard does not hold: undone at once", false, false, false},
		{"changed since: the next guard's own hold is undone to it", true, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := filepath.Join(t.TempDir(), "state")
			dead, k := newFakeGuard(t, DefaultConfig())
			var err error
			if dead.records, err = openRecords(state); err != nil {
				t.Fatal(err)
			}
			c := k.guardNew(dead, "/pod", fLimit, fBelow)
			if !c.held {
				t.Fatal("the first guard did not hold")
			}
			dead.records.close() // SIGKILL: nothing undone, the record stays
			if tc.changed {
				k.set(func() { k.cgroups["/pod"].oomKillDisable = false })
			}

			cfg := DefaultConfig()
			cfg.HoldOOM = tc.hold
			next, err := NewOn(cfg, k.kernel(), k, nil)
			if err != nil {
				t.Fatal(err)
			}
			next.poller, _ = k.kernel().NewPoller()
			next.inotify, _ = k.kernel().NewWatcher()
			if next.records, err = openRecords(state); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(next.stopRegistrations)
			next.add("/pod")
			settleReads(t, next)
			next.install(<-next.registered)
			var held bool
			k.set(func() { held = k.cgroups["/pod"].oomKillDisable })
			if held != tc.hold {
				t.Errorf("oom_kill_disable %v under the next guard, want %v", held, tc.hold)
			}
			next.releaseAll()
			k.set(func() { held = k.cgroups["/pod"].oomKillDisable })
			if held != tc.wantAfter {
				t.Errorf("oom_kill_disable %v after the next guard, want %v", held, tc.wantAfter)
			}
			if len(next.records.m) != 0 {
				t.Errorf("records left: %+v", next.records.m)
			}
		})
	}
}
