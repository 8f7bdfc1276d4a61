package guard

import (
	"errors"
	"time"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"k8s.io/klog/v2"
)

// look reads a cgroup after a notification or a recheck and acts on the
// verdict. notified is when the kernel's notification arrived: the
// reaction time is measured from there to the signal.
func (g *Guard) look(c *cg, notified time.Time) {
	if !c.guarded() {
		return
	}
	usage, err := g.usageOf(c)
	if err != nil {
		// The kernel signals a cgroup's eventfds when it is removed.
		g.warnUnlessGone(c, "read usage", err)
		return
	}
	limit, err := g.limitOf(c)
	if err != nil {
		g.warnUnlessGone(c, "read limit", err)
		return
	}
	since := time.Duration(-1)
	if !c.lastAction.IsZero() {
		if usage >= c.threshold && g.victimGone(c) {
			g.endCooldown(c) // the victim's memory is gone: this is a new spike
		} else {
			since = notified.Sub(c.lastAction)
		}
	}
	verdict := g.cfg.Assess(Look{Usage: usage, Limit: limit, ArmedLimit: c.armedLimit, SinceAction: since})
	switch verdict {
	case Rearm:
		g.setLimit(c, limit)
		return
	case Below:
		g.endCooldown(c) // below the threshold: the victim's memory is gone
		g.endStuck(c)
		g.rehold(c)
		c.episode, c.reclaimed, c.noopShown, c.killFailShown = false, false, false, false
		c.recheckAt = time.Time{}
		g.restFiles(c, usage)
		return
	case Cooling:
		klog.V(4).Infof("cgroup %s: usage %s above threshold %s: cooling down after the kill of pid %d", c.rel, bytesMiB(usage), bytesMiB(c.threshold), c.victim.Pid)
		g.setRecheck(c, c.lastAction.Add(g.cfg.GuardInterval))
		if c.victim.Pid != 0 && !c.victimWatch {
			// No pidfd to say when the victim is gone: ask /proc soon.
			g.setRecheck(c, minTime(c.recheckAt, g.clock.Now().Add(g.cfg.RecheckInterval)))
		}
		return
	}
	if c.victimWatch && usage <= c.killUsage && g.clock.Now().Sub(c.lastAction) < dyingWait && !g.victimGone(c) {
		// --guard-ms has passed, but the victim is still exiting (its
		// pidfd says so; cgroup.procs may no longer list it) and usage has
		// not grown since the kill: the same overshoot, still draining
		// (tens of milliseconds under emulation). A kill now would be a
		// second one for it; growth beyond it is a new spike.
		g.setRecheck(c, g.clock.Now().Add(g.cfg.RecheckInterval))
		return
	}
	g.endCooldown(c) // acting: the bound has passed
	if c.killingRest.Load() {
		g.setRecheck(c, g.clock.Now().Add(g.cfg.RecheckInterval))
		return
	}
	c.episode = true
	p := g.validPrep(c, notified)
	var statBefore string // for the event, should the cgroup be gone after the kill
	if p != nil {
		statBefore = p.statText
	}
	if p == nil || g.cfg.Judge(limit, p.reclaimable+sub(usage, p.usage)) == StandDown {
		// Without a preparation, or if the page cache may have grown
		// enough since, read memory.stat now.
		stat, err := g.statOf(c)
		if err != nil {
			g.warnUnlessGone(c, "read memory.stat", err)
			return
		}
		if g.cfg.Judge(limit, stat.Reclaimable) == StandDown {
			g.standDown(c, usage, stat)
			return
		}
		statBefore = stat.Text
	}
	var victim Victim
	if p != nil {
		victim, p.target = p.target, nil
		g.dropPrep(c)
	}
	// The victim is signalled only while it is inside c, checked right
	// before the signal (atKill): one prepared at the early threshold may
	// have moved away or died since; one just chosen may have too.
	for tries := 0; ; tries++ {
		prepared := victim != nil
		if victim == nil {
			var why string
			if victim, why = g.chooseVictim(c, limit); victim == nil {
				g.nothingToKill(c, usage, why)
				return
			}
		}
		ok, moved := g.atKill(c, victim, prepared)
		if ok {
			break
		}
		victim.Close()
		victim = nil
		if !moved {
			// Dead or dying (the kernel's kill, most likely): its memory
			// is on its way back; wait for it, as the kernel would.
			g.nothingToKill(c, usage, "its victim is dying")
			return
		}
		if tries == 2 {
			g.nothingToKill(c, usage, "every victim chosen left the cgroup before its kill")
			return
		}
	}
	g.endStuck(c)
	g.act(c, victim, usage, limit, notified, statBefore)
}

// atKill checks, at the moment of the kill, that victim still runs, is
// not dying, and is inside c (its cgroup or below): the guard never kills
// outside the cgroup whose limit it guards. The check is two preads of
// /proc files the victim's Target holds open (kill.Target.Recheck). Where the victim's cgroup cannot be told (a cgroup
// namespace hiding it), the guard kills as before and says so once. moved:
// not killed because it left c.
func (g *Guard) atKill(c *cg, victim Victim, prepared bool) (ok, moved bool) {
	who := victim.Inspected()
	now, err := victim.Recheck()
	switch {
	case now.Gone || now.Dying:
		klog.V(2).Infof("cgroup %s: victim pid %d (%s) exited or is exiting: not killed", c.rel, who.Pid, who.Comm)
		return false, false
	case prepared && err == nil && now.RSSKB < who.Status.RSSKB()+grownKB:
		// Chosen at the early threshold, it has not grown since: the
		// growth that crossed the threshold is another's (a worker forked
		// after the choice; measured: a respawning workload's supervisor
		// killed in place of its new worker). The crossing chooses
		// afresh, as the kernel would choose at the limit.
		klog.V(3).Infof("cgroup %s: prepared victim pid %d (%s) has not grown since it was chosen: choosing again", c.rel, who.Pid, who.Comm)
		return false, true
	case err != nil:
		if !g.scopeUnknown {
			g.scopeUnknown = true
			klog.Warningf("cgroup %s: cannot tell the victim's cgroup at the kill (%v): killing by the listing alone", c.rel, err)
		}
		return true, false
	case !now.Inside || now.Cgroup != c.rel && !isUnder(now.Cgroup, c.rel):
		if again, _ := victim.Recheck(); again.Gone || again.Dying {
			// A task that exits leaves its cgroup: it died meanwhile.
			return false, false
		}
		where := now.Cgroup
		if !now.Inside {
			where = "a cgroup outside " + g.mem.FS().Root
		}
		klog.Infof("cgroup %s: victim pid %d (%s) moved to %s since it was chosen: not killed; choosing again", c.rel, who.Pid, who.Comm, where)
		return false, true
	}
	victim.SetCgroup(now.Cgroup)
	return true, false
}

// grownKB is how much a prepared victim must have grown since its choice
// to be taken for the process whose growth crossed the threshold: between
// the early threshold and the threshold the grower grows by the gap
// between them, megabytes.
const grownKB = 256

// nothingToKill: c is above its threshold and has no process the guard
// may kill (v1 keeps the pages of a process that moved away charged to
// the cgroup it left; every process exempt; the last victim still dying).
// Nothing to do but look again, with back-off, and say so once an episode
// (oomguard_stand_downs_total{reason="nothing-to-kill"} counts episodes).
func (g *Guard) nothingToKill(c *cg, usage uint64, why string) {
	if c.stuck == 0 {
		c.stuckSince = g.clock.Now()
		g.metrics.StandDown("nothing-to-kill")
		klog.Warningf("cgroup %s: usage %s above its threshold %s, but %s: looking again with back-off up to %v",
			c.rel, bytesMiB(usage), bytesMiB(c.threshold), why, stuckMax)
	}
	c.stuck++
	g.setRecheck(c, g.clock.Now().Add(min(g.cfg.RecheckInterval<<min(c.stuck-1, 16), stuckMax)))
	g.releaseIfWaiting(c, why)
}

// stuckMax bounds the back-off of a cgroup with nothing to kill: a process
// that moves in and grows is acted on at most this late (the kernel may
// win that race; it would win it anyway with nothing to kill before).
const stuckMax = 500 * time.Millisecond

// endStuck ends a nothing-to-kill episode, saying how long it lasted.
func (g *Guard) endStuck(c *cg) {
	if c.stuck > 0 {
		klog.Infof("cgroup %s: nothing-to-kill episode over after %d looks", c.rel, c.stuck)
		c.stuck = 0
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func sub(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return 0
}

// standDown leaves a cgroup with much reclaimable page cache to the
// kernel's reclaim, asks for reclaim once per episode (off the loop, bounded),
// and looks again soon: the kernel will not signal again while usage stays
// above the threshold.
func (g *Guard) standDown(c *cg, usage uint64, stat cgroup.Stat) {
	g.metrics.StandDown("reclaimable-cache")
	if !c.reclaimed {
		c.reclaimed = true
		klog.V(2).Infof("cgroup %s: usage %s above threshold %s, but %s of page cache is reclaimable: standing down, requesting reclaim",
			c.rel, bytesMiB(usage), bytesMiB(c.threshold), bytesMiB(stat.Reclaimable))
		select {
		case g.reclaims <- c.rel:
		default:
		}
	}
	g.setRecheck(c, g.clock.Now().Add(g.cfg.RecheckInterval))
	g.releaseIfWaiting(c, "its page cache is reclaimable, which the kernel's reclaim could not free")
}

// reclaimer runs reclaim requests one at a time, each bounded by
// ReclaimBudget, so reclaim never stalls the loop.
func (g *Guard) reclaimer(quit <-chan struct{}) {
	for {
		select {
		case <-quit:
			return
		case rel := <-g.reclaims:
			start := g.clock.Now()
			err := g.mem.Reclaim(rel, g.cfg.MaxMargin, g.cfg.ReclaimBudget)
			switch {
			case errors.Is(err, cgroup.ErrBudget):
				klog.V(2).Infof("cgroup %s: reclaim stopped at its %v budget", rel, g.cfg.ReclaimBudget)
			case err != nil && !cgroup.IsNotExist(err):
				klog.V(2).Infof("cgroup %s: reclaim: %v", rel, err)
			default:
				klog.V(3).Infof("cgroup %s: reclaim took %v", rel, time.Since(start))
			}
		}
	}
}
