package guard

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/kill"
)

func processes(g *Guard, killed []kill.Candidate) []event.Process {
	var ps []event.Process
	for _, k := range killed {
		ps = append(ps, event.Process{
			Pid: k.Pid, Comm: k.Comm, OOMScore: k.OOMScore, Cgroup: g.absPath(k.Cgroup), PidInNS: k.Status.PidInNS,
			AnonRSSKB: k.Status.RssAnonKB, FileRSSKB: k.Status.RssFileKB, ShmemRSSKB: k.Status.RssShmemKB, TotalVMKB: k.Status.VmSizeKB,
		})
	}
	return ps
}

// chooseVictim scores rel's processes and holds the one the kernel would
// kill by pidfd; nil if none may be killed.
func (g *Guard) chooseVictim(c *cg, limit uint64) *kill.Target {
	cands, err := g.killer.Candidates(c.rel, limit)
	if err != nil && len(cands) == 0 {
		g.warnUnlessGone(c, "list processes", err)
		return nil
	}
	if kill.AnyDying(cands, g.self) {
		klog.V(3).Infof("cgroup %s: above its threshold, a process already dying: waiting for its memory", c.rel)
		return nil
	}
	best, ok := kill.Choose(cands, g.self)
	if !ok {
		klog.Warningf("cgroup %s: above its threshold %s, but no process may be killed", c.rel, bytesMiB(c.threshold))
		return nil
	}
	victim, err := g.killer.Open(best)
	if err != nil {
		if !g.permanentKillFailure(c, err) {
			klog.V(2).Infof("cgroup %s: victim pid %d (%s): %v", c.rel, best.Pid, best.Comm, err)
		}
		return nil
	}
	return victim
}

// act applies the policy to the chosen victim (the process the kernel
// would choose). The victim is signalled first, through its pidfd: that
// stops the growth at once; for the container policy its cgroup's other
// processes follow (frozen, killed, thawed; v2: cgroup.kill). Reporting
// comes after.
//
// memory.oom.group (v2; the kubelet sets it on every container since
// 1.28) says the workload must not outlive a partial OOM kill: the kernel
// would kill the whole group, whichever process it chose. So the process
// policy kills the whole group too, and the container policy kills the
// group where it is larger than the container; the event says so.
func (g *Guard) act(c *cg, victim *kill.Target, usage, limit uint64, notified time.Time, statBefore string) {
	ev := event.Event{
		Hostname: g.cfg.Hostname, OOMCgroup: g.absPath(c.rel), ProcCgroup: g.absPath(victim.Cgroup),
		Threshold: c.threshold, Usage: usage, Limit: limit, Policy: g.cfg.Policy.Title(),
	}
	killed := []kill.Candidate{victim.Candidate}
	var sent time.Time
	var err error
	var note string
	// rest kills the rest of the victim's container or group, when the
	// policy says so: after the victim, and off the loop (a freeze, or a
	// runtime's answer, can take tens of milliseconds).
	var rest func() []kill.Candidate
	switch g.cfg.Policy {
	case PolicyNoop:
		victim.Close()
		if c.noopShown {
			return
		}
		c.noopShown = true
		ev.Reason = event.WouldKill
		if group := g.oomGroup(c, victim.Cgroup); group != "" {
			note = fmt.Sprintf("; memory.oom.group is set on %s: the kernel will kill all of it", g.absPath(group))
		}
	case PolicyProcess:
		sent, err = victim.Kill()
		g.own.note(victim.Candidate, err)
		ev.Reason = event.KillProcess
		if group := g.oomGroup(c, victim.Cgroup); err == nil && group != "" {
			ev.Reason = event.KillContainer
			rest = g.killRest(c.rel, victim.Candidate, group, g.killer.KillGroup)
			note = fmt.Sprintf("; memory.oom.group is set on %s: the kernel would kill all of it, not one process, so the process policy did too", g.absPath(group))
		}
	case PolicyContainer:
		sent, err = victim.Kill()
		g.own.note(victim.Candidate, err)
		ev.Reason = event.KillContainer
		if err == nil {
			target := victim.Cgroup
			if group := g.oomGroup(c, victim.Cgroup); group != "" && group != target {
				target = group
				note = fmt.Sprintf("; memory.oom.group is set on %s, above the container: all of it killed, as the kernel would", g.absPath(group))
			}
			rest = g.killRest(c.rel, victim.Candidate, target, g.killer.KillContainer)
		}
	}
	c.lastAction = time.Now()
	c.recheckAt = c.lastAction.Add(g.cfg.GuardInterval)
	if err != nil {
		if !g.permanentKillFailure(c, err) {
			klog.Errorf("cgroup %s: %s of pid %d (%s): %v", c.rel, g.cfg.Policy, victim.Pid, victim.Comm, err)
		}
		c.recheckAt = time.Now().Add(g.cfg.RecheckInterval)
		return
	}
	reaction := time.Duration(0)
	if !sent.IsZero() {
		reaction = sent.Sub(notified)
		if g.Observe != nil {
			g.Observe(reaction)
		}
	}
	g.metrics.Action(ev.Reason, reaction)
	ev.Stats = statBefore
	if stat, err := c.files.Stat(); err == nil {
		ev.Stats = stat.Text
	}
	if rest == nil {
		g.report(ev, killed, reaction, note)
		return
	}
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
		g.report(ev, killed, reaction, note)
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

func (g *Guard) report(ev event.Event, killed []kill.Candidate, reaction time.Duration, note string) {
	ev.Timestamp = time.Now()
	ev.Processes = processes(g, killed)
	ev.Killed = event.KilledField(ev.Processes)
	verb := map[event.Reason]string{event.WouldKill: "would kill", event.KillProcess: "killed", event.KillContainer: "killed container of"}[ev.Reason]
	ev.Message = fmt.Sprintf("%s %s in %s: usage %s over threshold %s (limit %s), policy %s",
		verb, strings.TrimSpace(ev.Killed), ev.OOMCgroup, bytesMiB(ev.Usage), bytesMiB(ev.Threshold), bytesMiB(ev.Limit), g.cfg.Policy)
	if reaction > 0 {
		ev.Message += fmt.Sprintf(", %v after the kernel's notification", reaction.Round(time.Microsecond))
	}
	ev.Message += note
	g.sink.Send(ev)
}

func isUnder(rel, parent string) bool {
	return parent == "/" || len(rel) > len(parent) && rel[:len(parent)] == parent && rel[len(parent)] == '/'
}
