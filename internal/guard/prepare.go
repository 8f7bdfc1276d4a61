package guard

import (
	"time"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/kill"
)

// prepared is a kill made ready while a cgroup is above its early
// threshold: when the real threshold is crossed, the guard signals the
// victim's pidfd at once. The preparation is redone on every early crossing
// and dropped after PrepareMaxAge, so the victim is the top scorer of a
// moment ago. Checking the cgroup's process list again at the crossing was
// measured to cost 25-80 µs on a cgroup under allocation pressure, more than
// the rest of the decision, for the rare case of a new process outgrowing
// the prepared victim in that moment.
type prepared struct {
	at          time.Time
	usage       uint64 // when prepared
	reclaimable uint64 // page cache when prepared
	statText    string // memory.stat when prepared
	target      Victim
}

// onEarly: usage crossed the early threshold, up or down.
func (g *Guard) onEarly(c *cg) {
	if !c.guarded() {
		return
	}
	usage, err := g.usageOf(c)
	if err != nil {
		g.warnUnlessGone(c, "read usage", err)
		return
	}
	if usage < c.early {
		// c.seen stays: the drop may be the kernel's kill, whose
		// notification can come after this one.
		g.dropPrep(c)
		g.restFiles(c, usage)
		return
	}
	if c.prep == nil || g.clock.Now().Sub(c.prep.at) > g.cfg.PrepareMaxAge/2 {
		g.prepare(c, usage)
	}
}

// prepare does the slow part of a kill ahead of need.
func (g *Guard) prepare(c *cg, usage uint64) {
	start := time.Now()
	g.dropPrep(c)
	acted := c.lastAction
	stat, err := g.statOf(c)
	if err != nil {
		g.warnUnlessGone(c, "read memory.stat", err)
		return
	}
	if g.yieldToCrossings(); c.lastAction != acted || !c.guarded() {
		return // acted on meanwhile (or let go of): this preparation is stale
	}
	cands, err := g.killer.Candidates(c.rel, c.limit)
	if err != nil && len(cands) == 0 {
		return
	}
	if g.yieldToCrossings(); c.lastAction != acted || !c.guarded() {
		return
	}
	if c.oomCheckAt.IsZero() {
		c.seen = nil // a fresh look: forget processes seen in an earlier episode
	}
	c.remember(cands)
	// Nothing is prepared while a process of it is dying, whatever its
	// score: one whose memory the kernel has already released
	// (process_mrelease) scores next to nothing, and the process that
	// would be prepared then, the top scorer left (the respawning
	// workload's supervisor, measured), is not the one about to grow: the
	// crossing chooses afresh (chooseVictim).
	best, why := g.pick(cands, true)
	if why != "" {
		return
	}
	target, err := g.killer.Open(best)
	if err != nil {
		return
	}
	c.prep = &prepared{at: g.clock.Now(), usage: usage, reclaimable: stat.Reclaimable, statText: stat.Text, target: target}
	g.preps[c] = struct{}{}
	klog.V(4).Infof("cgroup %s: usage %s above early threshold %s: victim pid %d (%s) ready in %v",
		c.rel, bytesMiB(usage), bytesMiB(c.early), best.Pid, best.Comm, time.Since(start).Round(time.Microsecond))
}

// validPrep returns the cgroup's preparation if it is recent; else it drops it.
func (g *Guard) validPrep(c *cg, now time.Time) *prepared {
	p := c.prep
	if p == nil {
		return nil
	}
	if now.Sub(p.at) > g.cfg.PrepareMaxAge {
		g.dropPrep(c)
		return nil
	}
	return p
}

func (g *Guard) dropPrep(c *cg) {
	if c.prep != nil {
		if c.prep.target != nil { // nil once the crossing took it
			c.prep.target.Close()
		}
		c.prep = nil
		delete(g.preps, c)
	}
}

// remember adds processes to what the cgroup was last seen running. An
// entry for a process already known keeps the larger memory figures: a
// process the kernel is killing reads as empty.
func (c *cg) remember(cands []kill.Candidate) {
	if c.seen == nil {
		c.seen = make(map[int]kill.Candidate, len(cands))
	}
	for _, k := range cands {
		if old, ok := c.seen[k.Pid]; ok && old.StartTime == k.StartTime && old.Status.RSSKB() > k.Status.RSSKB() {
			k.Status = old.Status
		}
		c.seen[k.Pid] = k
	}
}

// yieldToCrossings serves, in the middle of a preparation, the threshold
// crossings that have come since the loop last asked the kernel. A
// preparation (memory.stat, the process list, a pidfd) takes 100-350 us on
// a busy machine, about what a fast allocator needs to fill its margin:
// in a storm, crossings that waited behind one were lost to the kernel
// (bench/preempt, storm row). The other ready fds stay ready (the epoll
// set is level-triggered) for the loop's next turn.
func (g *Guard) yieldToCrossings() {
	if g.yielding || g.poller == nil {
		return
	}
	ready, woken, err := g.poller.Wait(0)
	g.wokenMidway = g.wokenMidway || woken
	if err != nil || len(ready) == 0 {
		return
	}
	urgent, _ := g.triage(ready)
	g.yielding = true
	g.serveUrgent(urgent, g.clock.Now())
	g.yielding = false
}
