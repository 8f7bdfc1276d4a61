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
	usage, err := c.files.Usage()
	if err != nil {
		// The kernel signals a cgroup's eventfds when it is removed.
		g.warnUnlessGone(c, "read usage", err)
		return
	}
	limit, err := c.files.Limit()
	if err != nil {
		g.warnUnlessGone(c, "read limit", err)
		return
	}
	since := time.Duration(-1)
	if !c.lastAction.IsZero() {
		since = notified.Sub(c.lastAction)
	}
	verdict := g.cfg.Assess(Look{Usage: usage, Limit: limit, ArmedLimit: c.armedLimit, SinceAction: since})
	switch verdict {
	case Rearm:
		g.setLimit(c, limit)
		return
	case Below:
		c.episode, c.reclaimed, c.noopShown, c.killFailShown = false, false, false, false
		c.recheckAt = time.Time{}
		return
	case Cooling:
		c.recheckAt = c.lastAction.Add(g.cfg.GuardInterval)
		return
	}
	if c.killingRest.Load() {
		c.recheckAt = g.clock.Now().Add(g.cfg.RecheckInterval)
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
		stat, err := c.files.Stat()
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
	} else if victim = g.chooseVictim(c, limit); victim == nil {
		c.recheckAt = g.clock.Now().Add(g.cfg.RecheckInterval)
		return
	}
	g.act(c, victim, usage, limit, notified, statBefore)
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
	c.recheckAt = g.clock.Now().Add(g.cfg.RecheckInterval)
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
