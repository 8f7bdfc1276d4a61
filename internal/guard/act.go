package guard

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/kill"
	"github.com/oom-guard/oom-guard/internal/notify"
)

func (g *Guard) unguard(c *cg) {
	if !c.guarded() {
		return
	}
	g.closeWatch(c.thw)
	g.closeWatch(c.earlyw)
	g.closeWatch(c.oomw)
	g.dropPrep(c)
	c.files.Close()
	c.thw, c.earlyw, c.oomw, c.files = nil, nil, nil, nil
	c.recheckAt, c.oomCheckAt, c.seen = time.Time{}, time.Time{}, nil
	g.guarded--
	g.metrics.SetGuarded(g.guarded)
	g.restoreSoftLimit(c)
}

func (g *Guard) watchFd(c *cg, w notify.Watch) bool {
	if err := g.poller.Add(w.Fd()); err != nil {
		klog.Errorf("cgroup %s: %v", c.rel, err)
		return false
	}
	g.byFd[w.Fd()] = c
	return true
}

// closeWatch takes a watch out of the epoll set before closing it: only
// the loop thread waits on it, so nothing is closed under a waiter.
func (g *Guard) closeWatch(w notify.Watch) {
	if w == nil {
		return
	}
	_ = g.poller.Remove(w.Fd())
	delete(g.byFd, w.Fd())
	w.Close()
}

// setSoftLimit puts c's soft limit (v1 memory.soft_limit_in_bytes, v2
// memory.high) at its threshold: everywhere with --openSoftLimit, and as the
// v2 tripwire (Config.HighTripwire) where memory.high is not somebody else's.
func (g *Guard) setSoftLimit(c *cg) {
	if !g.cfg.OpenSoftLimit && !g.tripwire() {
		return
	}
	v, err := g.mem.SoftLimit(c.rel)
	if err != nil {
		g.warnUnlessGone(c, "read soft limit", err)
		return
	}
	if !g.cfg.OpenSoftLimit {
		if v, err = g.tripwireBefore(c, v); err != nil {
			klog.V(2).Infof("cgroup %s: %v", c.rel, err)
			c.softLimitSaved = false
			return
		}
	}
	if !c.softLimitSaved {
		c.softLimit, c.softLimitSaved = v, true
	}
	if err := g.mem.SetSoftLimit(c.rel, c.threshold); err != nil {
		g.warnUnlessGone(c, "set soft limit", err)
		return
	}
	c.softLimitSet = pageFloor(c.threshold)
}

// tripwire says whether the guard puts memory.high at the thresholds of its
// own accord. Not under noop: a guard that will not act would leave the
// workload throttled at the threshold instead of merely watched.
func (g *Guard) tripwire() bool {
	return g.cfg.HighTripwire && g.cfg.Policy != PolicyNoop && g.mem.Version() == cgroup.VersionV2
}

// tripwireBefore returns the memory.high to restore when the guard lets go
// of c, given the value found (high), or an error when memory.high belongs
// to somebody else and is left alone. Once the guard has set it, it is the
// guard's while it still holds what the guard wrote. Before, a value at or
// above the limit is no setting at all, and one equal to the threshold (as
// the kernel keeps it, in whole pages) is the tripwire of a guard that died
// before restoring it. Anything else below the limit was set by the kubelet
// (MemoryQoS), systemd (MemoryHigh=) or an operator: the kernel counts
// "high" events there already, which the v2 notifier reacts to as well.
func (g *Guard) tripwireBefore(c *cg, high uint64) (uint64, error) {
	switch {
	case c.softLimitSaved && high == c.softLimitSet:
		return c.softLimit, nil
	case c.softLimitSaved:
		return 0, fmt.Errorf("memory.high changed to %s by somebody else: left as it is, no tripwire", bytesMiB(high))
	case high >= c.armedLimit:
		return high, nil
	case high == pageFloor(c.threshold):
		return cgroup.Unlimited, nil
	}
	return 0, fmt.Errorf("memory.high already set at %s, below the limit %s: left as it is, no tripwire", bytesMiB(high), bytesMiB(c.armedLimit))
}

// restoreSoftLimit puts back the soft limit found before the guard set its
// own, unless somebody changed it since: theirs is newer than ours.
func (g *Guard) restoreSoftLimit(c *cg) {
	if !c.softLimitSaved {
		return
	}
	c.softLimitSaved = false
	now, err := g.mem.SoftLimit(c.rel)
	if err == nil && now != c.softLimitSet {
		klog.V(2).Infof("cgroup %s: soft limit changed to %s by somebody else while guarded; not restoring %s", c.rel, bytesMiB(now), bytesMiB(c.softLimit))
		return
	}
	if err == nil {
		err = g.mem.SetSoftLimit(c.rel, c.softLimit)
	}
	if err != nil && !cgroup.IsNotExist(err) {
		klog.Warningf("cgroup %s: restore soft limit: %v", c.rel, err)
	}
}

// pageFloor is bytes as the kernel keeps a memory limit: in whole pages.
func pageFloor(bytes uint64) uint64 {
	page := uint64(os.Getpagesize())
	return bytes / page * page
}

func (g *Guard) warnUnlessGone(c *cg, what string, err error) {
	if cgroup.IsNotExist(err) {
		g.forget(c)
		return
	}
	klog.Warningf("cgroup %s: %s: %v", c.rel, what, err)
}

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
		c.recheckAt = time.Now().Add(g.cfg.RecheckInterval)
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
	var victim *kill.Target
	if p != nil {
		victim, p.target = p.target, nil
		g.dropPrep(c)
	} else if victim = g.chooseVictim(c, limit); victim == nil {
		c.recheckAt = time.Now().Add(g.cfg.RecheckInterval)
		return
	}
	g.act(c, victim, usage, limit, notified, statBefore)
}

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
	c.recheckAt = time.Now().Add(g.cfg.RecheckInterval)
}

// reclaimer runs reclaim requests one at a time, each bounded by
// ReclaimBudget, so reclaim never stalls the loop.
func (g *Guard) reclaimer(quit <-chan struct{}) {
	for {
		select {
		case <-quit:
			return
		case rel := <-g.reclaims:
			start := time.Now()
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

// chooseVictim scores rel's processes and holds the one the kernel would
// kill by pidfd; nil if none may be killed.
func (g *Guard) chooseVictim(c *cg, limit uint64) *kill.Target {
	cands, err := g.killer.Candidates(c.rel, limit)
	if err != nil && len(cands) == 0 {
		g.warnUnlessGone(c, "list processes", err)
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
		ev.Reason = event.KillProcess
		if group := g.oomGroup(c, victim.Cgroup); err == nil && group != "" {
			ev.Reason = event.KillContainer
			rest = g.killRest(c.rel, victim.Candidate, group, g.killer.KillGroup)
			note = fmt.Sprintf("; memory.oom.group is set on %s: the kernel would kill all of it, not one process, so the process policy did too", g.absPath(group))
		}
	case PolicyContainer:
		sent, err = victim.Kill()
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
		killed = append(killed, rest()...)
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

// onKernelOOM: the kernel found the cgroup out of memory. It notifies
// before it picks and kills a victim, so the processes are looked at now,
// while the victim is still there (alive or a zombie), and the kill
// counters a little later.
func (g *Guard) onKernelOOM(c *cg, notified time.Time) {
	klog.V(2).Infof("cgroup %s: the kernel reports it out of memory", c.rel)
	if cands, err := g.killer.Candidates(c.rel, c.limit); err == nil || len(cands) > 0 {
		c.remember(cands)
	}
	c.oomChecks = 0
	c.oomCheckAt = notified.Add(oomCheckDelays[0])
}

// oomCheckDelays are when, after the kernel's OOM notification, the kill
// counters are read: the kernel usually has killed within a millisecond,
// but a victim can take longer to choose or to die, and the event should
// name it.
var oomCheckDelays = [...]time.Duration{time.Millisecond, 10 * time.Millisecond, 50 * time.Millisecond}

// countKernelKills reports kernel OOM kills in c and its descendants since
// the last count (v1's oom_kill is charged to the victim's own cgroup), one
// event per kill, naming the victim where the processes seen before the
// kill tell which one is gone.
func (g *Guard) countKernelKills(c *cg) {
	usage, _ := g.mem.Usage(c.rel)
	stat, _ := g.mem.Stat(c.rel)
	lastCheck := c.oomChecks+1 >= len(oomCheckDelays)
	counted, waiting := false, false
	for rel, d := range g.known {
		if rel != c.rel && !isUnder(rel, c.rel) {
			continue
		}
		n, err := g.mem.OOMKills(rel)
		if err != nil || n <= d.oomKills {
			continue
		}
		delta := n - d.oomKills
		victims := g.goneFrom(c, rel)
		if g.oomGroup(c, rel) != "" {
			// A memory.oom.group kill: the kernel counts it once per
			// thread it signals, not per process, and goes on counting
			// after the victim. So wait for the last check and report
			// one kill per process seen there and gone.
			if !lastCheck {
				waiting = true
				continue
			}
			delta = max(uint64(len(victims)), 1)
		}
		if uint64(len(victims)) < delta && !lastCheck {
			waiting = true // a victim still dying: name it at the next check
			continue
		}
		counted = true
		d.oomKills = n
		for i := uint64(0); i < delta; i++ {
			g.metrics.KernelKill(event.CgroupOOM)
			ev := event.Event{
				Hostname: g.cfg.Hostname, OOMCgroup: g.absPath(c.rel), ProcCgroup: g.absPath(rel),
				Threshold: c.threshold, Usage: usage, Limit: c.limit, Stats: stat.Text, Policy: "Kernel", Reason: event.CgroupOOM,
			}
			var killed []kill.Candidate
			if i < uint64(len(victims)) {
				killed = victims[i : i+1]
			}
			g.reportKernelKill(ev, killed)
		}
	}
	if (waiting || !counted) && !lastCheck {
		c.oomChecks++
		c.oomCheckAt = time.Now().Add(oomCheckDelays[c.oomChecks] - oomCheckDelays[c.oomChecks-1])
		return
	}
	c.seen = nil
}

// goneFrom lists the processes seen in cgroup rel (below c) that no longer run.
func (g *Guard) goneFrom(c *cg, rel string) []kill.Candidate {
	var gone []kill.Candidate
	for _, k := range c.seen {
		if k.Cgroup == rel && !g.killer.Alive(k) {
			gone = append(gone, k)
		}
	}
	// The largest first: the kernel picks by size, so with several gone
	// the first is the likeliest victim of the first kill.
	slices.SortFunc(gone, func(a, b kill.Candidate) int { return cmp.Compare(b.OOMScore, a.OOMScore) })
	return gone
}

func (g *Guard) reportKernelKill(ev event.Event, killed []kill.Candidate) {
	ev.Timestamp = time.Now()
	ev.Processes = processes(g, killed)
	ev.Killed = event.KilledField(ev.Processes)
	who := "a process"
	if len(killed) > 0 {
		who = strings.TrimSpace(ev.Killed)
	}
	ev.Message = fmt.Sprintf("the kernel OOM-killed %s in %s (limit %s of %s hit)", who, ev.ProcCgroup, bytesMiB(ev.Limit), ev.OOMCgroup)
	g.sink.Send(ev)
}

func isUnder(rel, parent string) bool {
	return parent == "/" || len(rel) > len(parent) && rel[:len(parent)] == parent && rel[len(parent)] == '/'
}
