package guard

import (
	"errors"
	"path"
	"time"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/kill"
)

// processes are candidates as an event names them.
func processes(g *Guard, killed []kill.Candidate) []event.Process {
	ps := make([]event.Process, 0, len(killed))
	for _, k := range killed {
		ps = append(ps, k.Process(g.absPath(k.Cgroup)))
	}
	return ps
}

// chooseVictim scores rel's processes and holds the one the kernel would
// kill by pidfd; nil if none may be killed, and why. A dying process is
// never chosen; while one outscores every other, none is: the kernel's OOM
// killer, too, waits for a dying victim's memory rather than kill another
// (task_will_free_mem).
func (g *Guard) chooseVictim(c *cg, limit uint64) (Victim, string) {
	cands, err := g.killer.Candidates(c.rel, limit)
	if err != nil && len(cands) == 0 {
		g.warnUnlessGone(c, "list processes", err)
		return nil, "its processes could not be listed"
	}
	best, why := g.pick(cands, c.stuck == 0 || g.clock.Now().Sub(c.stuckSince) < dyingWait)
	if why != "" {
		return nil, why
	}
	victim, err := g.killer.Open(best)
	if err != nil {
		klog.V(2).Infof("cgroup %s: victim pid %d (%s): %v", c.rel, best.Pid, best.Comm, err)
		return nil, "its victim exited before it could be held"
	}
	return victim, ""
}

// dyingWait is how long a cgroup with a dying process in it waits for that
// process's memory before the guard kills another that outscores it: the
// kernel, too, kills nobody else while an OOM victim of its own is not
// yet reaped (oom_evaluate_task), and the guard's victims are reaped at
// once (process_mrelease), so that a dying process still there after this
// long is stuck in the kernel and its memory may never come back.
const dyingWait = time.Second

// pick is the victim among cands, or why there is none. A dying candidate
// blocks the choice while it outscores the best (the kernel's
// task_will_free_mem), or, with anyDying, whatever its score.
func (g *Guard) pick(cands []kill.Candidate, anyDying bool) (kill.Candidate, string) {
	best, ok := kill.Choose(cands, g.self)
	for _, d := range cands {
		if d.Dying && kill.Eligible(d, g.self) && (anyDying || !ok || d.OOMScore > best.OOMScore) {
			return kill.Candidate{}, "a process of it is dying"
		}
	}
	if !ok {
		return kill.Candidate{}, "no process may be killed"
	}
	return best, ""
}

// act applies the policy to the chosen victim (the process the kernel
// would choose). The victim is signalled first, through its pidfd: that
// stops the growth at once; for the container policy its cgroup's other
// processes follow (frozen, killed, thawed; v2: cgroup.kill), off the loop.
// The fact of it goes to the reporter after.
//
// memory.oom.group (v2; the kubelet sets it on every container since
// 1.28) says the workload must not outlive a partial OOM kill: the kernel
// would kill the whole group, whichever process it chose. So the process
// policy kills the whole group too, and the container policy kills the
// group where it is larger than the container; the action names it.
func (g *Guard) act(c *cg, victim Victim, usage, limit uint64, notified time.Time, statBefore string) {
	who := victim.Inspected()
	// The signal first: everything else (the action's record, the
	// victim's memory.oom.group, one or more reads) follows it.
	var sent time.Time
	var err error
	if g.cfg.Policy == PolicyNoop {
		victim.Close()
		if c.noopShown {
			return
		}
		c.noopShown = true
	} else {
		sent, err = victim.Kill()
		g.own.note(who, err)
	}
	a := event.Action{
		OOMCgroup: g.absPath(c.rel), ProcCgroup: g.absPath(who.Cgroup),
		Threshold: c.threshold, Usage: usage, Limit: limit, Policy: g.cfg.Policy.Title(),
	}
	// rest kills the rest of the victim's container or group, when the
	// policy says so: after the victim, and off the loop (a freeze, or a
	// runtime's answer, can take tens of milliseconds).
	var rest func() []kill.Candidate
	switch g.cfg.Policy {
	case PolicyNoop:
		a.Reason = event.WouldKill
		a.OOMGroup = g.absPathOr(g.oomGroup(c, who.Cgroup))
	case PolicyProcess:
		a.Reason = event.KillProcess
		if err != nil {
			break
		}
		if group := g.oomGroup(c, who.Cgroup); group != "" {
			a.Reason, a.OOMGroup = event.KillContainer, g.absPath(group)
			rest = g.killRest(c.rel, who, group, g.killer.KillGroup)
		}
	case PolicyContainer:
		a.Reason = event.KillContainer
		if err != nil {
			break
		}
		target := who.Cgroup
		if group := g.oomGroup(c, who.Cgroup); group != "" && group != target {
			target, a.OOMGroup = group, g.absPath(group)
		}
		rest = g.killRest(c.rel, who, target, g.killer.KillContainer)
	}
	if err != nil {
		// Nothing was killed, so nothing cools down: look again soon.
		if !g.permanentKillFailure(c, err) {
			klog.Errorf("cgroup %s: %s of pid %d (%s): %v", c.rel, g.cfg.Policy, who.Pid, who.Comm, err)
		}
		g.setRecheck(c, g.clock.Now().Add(g.cfg.RecheckInterval))
		g.releaseIfWaiting(c, "its kill failed")
		return
	}
	if sent.IsZero() { // noop: nothing killed, the bound alone
		c.lastAction = g.clock.Now()
		g.setRecheck(c, c.lastAction.Add(g.cfg.GuardInterval))
	} else {
		klog.V(3).Infof("cgroup %s: killed pid %d (%s), oom_score %d, usage %s", c.rel, who.Pid, who.Comm, who.OOMScore, bytesMiB(usage))
		g.coolDown(c, victim, usage)
		c.killedOne(who) // not the kernel's victim, whatever its count says next
	}
	if !sent.IsZero() {
		a.Reaction = sent.Sub(notified)
		if g.Observe != nil {
			g.Observe(a.Reaction)
		}
	}
	killed := []kill.Candidate{who}
	if rest == nil {
		// memory.stat as the kill left it (tens of microseconds to read
		// on v1) can wait for the other cgroups crossing meanwhile.
		g.afterCrossings(func() { g.tell(g.withStats(a, c, statBefore), killed) })
		return
	}
	a = g.withStats(a, c, statBefore)
	// The cgroup cools down until the rest is killed: one spike, one kill.
	c.killingRest.Store(true)
	g.killers.Add(1)
	go func() {
		defer g.killers.Done()
		others := rest()
		for _, k := range others {
			g.own.note(k, nil)
		}
		killed = append(killed, others...)
		c.killingRest.Store(false)
		g.tell(a, killed)
	}()
}

// permanentKillFailure logs a kill that failed for a reason that will not
// go away (ENOSYS, EPERM: the kill package has already tried its next
// fallback, and counted it) at error level, once per episode of the
// cgroup, instead of at every recheck. It tells whether err was one.
func (g *Guard) permanentKillFailure(c *cg, err error) bool {
	if !kill.Permanent(err) {
		return false
	}
	if !c.killFailShown {
		c.killFailShown = true
		klog.Errorf("cgroup %s: cannot kill, and trying again will not help: %v (logged once per episode)", c.rel, err)
	}
	return true
}

// withStats gives a the cgroup's memory.stat as it is now, or as it was
// read before the kill (statBefore) if it cannot be read.
func (g *Guard) withStats(a event.Action, c *cg, statBefore string) event.Action {
	a.Stats = statBefore
	if stat, err := g.statOf(c); err == nil {
		a.Stats = stat.Text
	}
	return a
}

// tell hands the action, with whom it killed, to the reporter.
func (g *Guard) tell(a event.Action, killed []kill.Candidate) {
	a.At = g.clock.Now()
	a.Killed = processes(g, killed)
	g.reporter.Acted(a)
}

// killRest returns what kills the rest of cgroup rel after its victim,
// with killAll, and says whom it killed. It runs off the loop: it must
// touch nothing of the loop's but what it was given.
func (g *Guard) killRest(guarded string, victim kill.Candidate, rel string,
	killAll func(string) ([]kill.Candidate, time.Time, error)) func() []kill.Candidate {
	return func() []kill.Candidate {
		all, _, err := killAll(rel)
		if err != nil && !errors.Is(err, kill.ErrNoVictim) {
			klog.Warningf("cgroup %s: kill the rest of %s: %v", guarded, rel, err)
		}
		var others []kill.Candidate
		for _, k := range all {
			if k.Pid != victim.Pid {
				others = append(others, k)
			}
		}
		return others
	}
}

// oomGroup is the cgroup the kernel would kill whole for a victim in
// cgroup victim when c's limit is hit: the highest one with
// memory.oom.group set from the victim's up to c (mem_cgroup_get_oom_group
// in the kernel); "" if none.
func (g *Guard) oomGroup(c *cg, victim string) string {
	group := ""
	for rel := victim; ; rel = path.Dir(rel) {
		if on, err := g.mem.OOMGroup(rel); err == nil && on {
			group = rel
		}
		if rel == c.rel || rel == "/" || !isUnder(rel, c.rel) {
			return group
		}
	}
}

func isUnder(rel, parent string) bool {
	return parent == "/" || len(rel) > len(parent) && rel[:len(parent)] == parent && rel[len(parent)] == '/'
}

// absPathOr is rel's absolute path, or "" for "".
func (g *Guard) absPathOr(rel string) string {
	if rel == "" {
		return ""
	}
	return g.absPath(rel)
}
