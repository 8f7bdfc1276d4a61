package guard

import (
	"errors"
	"fmt"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/cgroup"
)

// A hold (--v1-hold-oom) makes the kernel wait for the guard: on cgroup v1
// the guard sets oom_kill_disable in every cgroup it guards, so that a
// task that meets the limit before the guard has acted sleeps, killable,
// until memory is freed, instead of the kernel killing one (the kernel's
// documented hand-over of a cgroup's OOM to user space, cgroup-v1
// memory.txt, "OOM Control"). The guard still acts at its threshold, before
// the limit; the hold covers only the race it loses, when the host did not
// run its virtual CPU for milliseconds (1-40 ms measured on this project's
// machines) while a worker filled the margin: then the waiting task goes on
// as soon as the guard's victim is dead, and the kernel kills nobody.
//
// The kernel makes a task wait only at the end of a user page fault; an
// allocation a system call makes at the limit of a held cgroup fails with
// ENOMEM instead of an OOM kill (mm/memcontrol.c, mem_cgroup_oom). That,
// too, only in a race the guard has lost.
//
// The guard hands a cgroup back to the kernel's OOM killer for the rest of
// an episode (writes the operator's 0 back) whenever its tasks wait and the
// guard will not kill at once: nothing it may kill (every process exempt,
// the pod's pause alone), page cache it would stand down for (the kernel
// has reclaimed what it could before it waits), a kill that failed. The
// hold comes back when usage is below the threshold again.
//
// Never held:
//   - under noop: nobody would act for the waiting tasks;
//   - on kernels before 3.12, where the wait is inside the charge with the
//     task's locks held (kernel.HasOOMWait): a victim that needs one of
//     them could never exit;
//   - a cgroup the guard itself is in, or below one of its sub-tree: the
//     guard at its own limit would wait for itself;
//   - a cgroup whose operator set oom_kill_disable already: left as it is.
//
// The value is recorded before it is written (record.go), so that a guard
// that dies holding is undone by the next, and at once by its keeper
// (ReleaseHolds; cmd/oom-guard/keeper.go); on stop every hold is undone.

// holdOn tells whether the guard holds cgroups at all.
func (g *Guard) holdOn() bool {
	return g.cfg.HoldOOM && g.cfg.Policy != PolicyNoop && g.mem.Version() == cgroup.VersionV1 && g.kernel.OOMWait && g.records != nil
}

// sayHold tells at the start whether cgroups are held, and if asked for
// and not, why not.
func (g *Guard) sayHold() {
	var why string
	switch {
	case !g.cfg.HoldOOM || g.cfg.Policy == PolicyNoop || g.mem.Version() != cgroup.VersionV1:
		return
	case !g.kernel.OOMWait:
		why = "this kernel (before 3.12) would make the waiting tasks wait with their locks held"
	case g.records == nil:
		why = "without a state file (--state-file) a guard that died holding could not be undone"
	default:
		klog.Infof("holding: oom_kill_disable set in each guarded cgroup, so that a task at the limit waits for the guard's kill (restored on stop)")
		return
	}
	klog.Warningf("--v1-hold-oom: no hold: %s", why)
}

// hold sets oom_kill_disable in c, newly guarded, where it may; without a
// hold it undoes one a dead guard left.
func (g *Guard) hold(c *cg) {
	if !g.holdOn() || g.holdsSelf(c) {
		g.restoreRecorded(c, holdSetting,
			func() (uint64, error) { d, err := g.mem.OOMKillDisabled(c.rel); return b2u(d), err },
			func(v uint64) error { return g.mem.SetOOMKillDisable(c.rel, v == 1) })
		return
	}
	disabled, err := g.mem.OOMKillDisabled(c.rel)
	if err != nil {
		g.warnUnlessGone(c, "read oom_kill_disable", err)
		return
	}
	if g.recordedOriginal(c, holdSetting, b2u(disabled)) == 1 {
		klog.V(2).Infof("cgroup %s: oom_kill_disable is the operator's: left set, not the guard's to undo", c.rel)
		g.recordRestored(c, holdSetting)
		return
	}
	if err := g.recordWrite(c, holdSetting, 0, 1); err != nil {
		klog.Warningf("cgroup %s: not held: %v", c.rel, err)
		return
	}
	c.held = true
	if disabled {
		return // a dead guard's hold, recorded: this guard's now
	}
	if err := g.mem.SetOOMKillDisable(c.rel, true); err != nil {
		c.held = false
		g.recordRestored(c, holdSetting)
		g.holdRefused(c, err)
	}
}

// holdRefused says once what the kernel refused (before 4.x it refuses
// oom_kill_disable in a cgroup whose parent uses hierarchy, that is in
// every cgroup but the root's children).
func (g *Guard) holdRefused(c *cg, err error) {
	if cgroup.IsNotExist(err) {
		g.forget(c)
		return
	}
	g.metrics.Fault(FaultHold)
	if g.holdRefusedShown {
		klog.V(2).Infof("cgroup %s: the kernel refused oom_kill_disable: %v: not held", c.rel, err)
		return
	}
	g.holdRefusedShown = true
	klog.Warningf("cgroup %s: the kernel refused oom_kill_disable: %v: not held, a race the guard loses there is the kernel's kill (said once; oomguard_faults_total{kind=%q} counts the cgroups)", c.rel, err, FaultHold)
}

// holdsSelf tells whether c is the guard's own cgroup or one above it.
// Where the guard cannot tell its cgroup it holds nothing.
func (g *Guard) holdsSelf(c *cg) bool {
	if g.selfCgroup == nil {
		rel, err := "", errors.New("no way to tell the guard's own cgroup")
		if g.kernel.SelfCgroup != nil {
			rel, err = g.kernel.SelfCgroup()
		}
		if err != nil {
			klog.Warningf("no hold on any cgroup: the guard's own cgroup is unknown (%v), and a hold over it would make the guard wait for itself", err)
		}
		g.selfCgroup = &selfCgroup{rel: rel, err: err}
	}
	s := g.selfCgroup
	return s.err != nil || s.rel != "" && (s.rel == c.rel || isUnder(s.rel, c.rel))
}

// selfCgroup is the guard's own memory cgroup relative to the root ("" when
// outside it), asked once.
type selfCgroup struct {
	rel string
	err error
}

// unhold undoes c's hold, as the guard lets go of c: the operator's 0 back,
// unless somebody set another value meanwhile.
func (g *Guard) unhold(c *cg) {
	if !c.held {
		return
	}
	c.held = false
	released := c.holdReleased
	c.holdReleased = false
	if !released {
		disabled, err := g.mem.OOMKillDisabled(c.rel)
		if err == nil && disabled {
			err = g.mem.SetOOMKillDisable(c.rel, false)
		}
		if err != nil && !cgroup.IsNotExist(err) {
			klog.Warningf("cgroup %s: undo the hold (oom_kill_disable 0): %v", c.rel, err)
			return // the record stays: a successor tries again
		}
	}
	g.recordRestored(c, holdSetting)
}

// releaseIfWaiting hands c back to the kernel's OOM killer for the episode
// when its tasks wait at the limit and the look that just ended leaves no
// kill under way: the guard will not act for them at once.
func (g *Guard) releaseIfWaiting(c *cg, why string) {
	if !c.held || c.holdReleased || c.victim.Pid != 0 || c.killingRest.Load() || !c.episode {
		return
	}
	under, err := g.mem.UnderOOM(c.rel)
	if err != nil || !under {
		return
	}
	if err := g.mem.SetOOMKillDisable(c.rel, false); err != nil {
		g.warnUnlessGone(c, "hand the waiting tasks to the kernel's OOM killer (oom_kill_disable 0)", err)
		return
	}
	c.holdReleased = true
	g.metrics.StandDown(StandDownHoldReleased)
	klog.Infof("cgroup %s: its tasks wait at the limit, and the guard will not kill (%s): handed to the kernel's OOM killer until usage is below the threshold again", c.rel, why)
}

// rehold puts the hold back after an episode in which the kernel had it.
func (g *Guard) rehold(c *cg) {
	if !c.holdReleased {
		return
	}
	c.holdReleased = false
	if err := g.mem.SetOOMKillDisable(c.rel, true); err != nil {
		c.held = false
		g.recordRestored(c, holdSetting)
		g.holdRefused(c, err)
	}
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// ReleaseHolds undoes the holds that a guard no longer running left in
// mem's hierarchy, as its record in stateFile says, by the record's rules
// (record.go): the kernel's OOM killer has those cgroups again until the
// next guard. The binary's keeper calls it when its guard has ended
// (cmd/oom-guard/keeper.go); no guard may run over the hierarchy
// meanwhile. It returns how many cgroups it released.
func ReleaseHolds(stateFile string, mem cgroup.Memory) (int, error) {
	r, err := openRecords(stateFile)
	if err != nil {
		return 0, fmt.Errorf("state file %s: %w", stateFile, err)
	}
	defer r.close()
	g := &Guard{mem: memory{mem}, records: r}
	var holds []limitRecord
	for _, rec := range r.m {
		if rec.Setting == holdSetting {
			holds = append(holds, rec)
		}
	}
	released := 0
	for _, rec := range holds {
		rel, ok := mem.FS().Rel(rec.Path)
		if !ok {
			continue // another --root's: left for a guard over it
		}
		c := &cg{rel: rel}
		read := func() (uint64, error) { d, err := mem.OOMKillDisabled(rel); return b2u(d), err }
		before, _ := read()
		g.restoreRecorded(c, holdSetting, read, func(v uint64) error { return mem.SetOOMKillDisable(rel, v == 1) })
		if after, err := read(); err == nil && before == 1 && after == 0 {
			released++
		}
	}
	return released, nil
}
