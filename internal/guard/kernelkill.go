package guard

import (
	"cmp"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/kill"
	"k8s.io/klog/v2"
)

// onKernelOOM: the kernel found the cgroup out of memory. It notifies
// before it picks and kills a victim, so the processes are looked at now,
// while the victim is still there (alive or a zombie), and the kill
// counters a little later.
func (g *Guard) onKernelOOM(c *cg, notified time.Time) {
	klog.V(2).Infof("cgroup %s: the kernel reports it out of memory", c.rel)
	cands, err := g.killer.Candidates(c.rel, c.limit)
	if err == nil || len(cands) > 0 {
		c.remember(cands)
	}
	c.oomSeen = make(map[int]uint64, len(cands))
	for _, k := range cands {
		c.oomSeen[k.Pid] = k.StartTime
	}
	c.oomChecks = 0
	g.setOOMCheck(c, notified.Add(oomCheckDelays[0]))
}

// oomCheckDelays are when, after the kernel's OOM notification, the kill
// counters are read: the kernel usually has killed within a millisecond,
// but a victim can take longer to choose or to die, and the event should
// name it. The last check names none it has not seen gone, and the
// processes seen are forgotten after it. In the cgroup v2 VM (QEMU
// without KVM), under the load of the rest of the guard package's tests,
// a kill came out without its victim in 2 of 7 runs when the last check
// was at 50 ms, and in none of 4 runs with a check at 250 ms added
// (TestV2NoopReportsKernelKillFromMemoryEvents).
var oomCheckDelays = [...]time.Duration{time.Millisecond, 10 * time.Millisecond, 50 * time.Millisecond, 250 * time.Millisecond}

// countKernelKills reports kernel OOM kills in c and its descendants since
// the last count (v1's oom_kill is charged to the victim's own cgroup), one
// fact per kill, naming the victim where the processes seen before the
// kill tell which one is gone; a memory.oom.group kill (v2) is one fact
// per cgroup whose count moved, naming all it took (reportGroupKills).
func (g *Guard) countKernelKills(c *cg) {
	usage, err := g.mem.Usage(c.rel)
	if err != nil && !cgroup.IsNotExist(err) {
		klog.V(2).Infof("cgroup %s: usage after the kernel's OOM kill: %v", c.rel, err)
	}
	stat, err := g.mem.Stat(c.rel)
	if err != nil && !cgroup.IsNotExist(err) {
		klog.V(2).Infof("cgroup %s: memory.stat after the kernel's OOM kill: %v", c.rel, err)
	}
	lastCheck := c.oomChecks+1 >= len(oomCheckDelays)
	counted, waiting := false, false
	for rel, d := range g.known {
		if rel != c.rel && !isUnder(rel, c.rel) {
			continue
		}
		n, err := g.mem.OOMKills(rel)
		if errors.Is(err, cgroup.ErrNoOOMKillCounter) {
			// Before 4.13: each kill is inferred, so the count goes on
			// to the last check (a second victim may follow the first).
			if g.inferKernelKills(c, rel, usage, stat.Text) > 0 {
				counted = true
			}
			waiting = true
			continue
		}
		if err != nil || n <= d.oomKills {
			continue
		}
		if group := g.oomGroup(c, rel); group != "" {
			// A memory.oom.group kill: one kill of the whole group, which
			// the kernel counts once per thread it signals and goes on
			// counting after the victim. Noted now, reported at the last
			// check, or as soon as the cgroup goes (its container's
			// runtime removes it when the last process is dead).
			g.noteGroupKill(c, rel, group, n)
			counted, waiting = true, true
			continue
		}
		delta := n - d.oomKills
		victims := g.goneFrom(c, rel)
		if uint64(len(victims)) < delta && !lastCheck {
			waiting = true // a victim still dying: name it at the next check
			continue
		}
		counted = true
		d.oomKills = n
		for i := uint64(0); i < delta; i++ {
			k := event.CounterKill{
				At: g.clock.Now(), OOMCgroup: g.absPath(c.rel), ProcCgroup: g.absPath(rel),
				Threshold: c.threshold, Usage: usage, Limit: c.limit, Stats: stat.Text,
			}
			if i < uint64(len(victims)) {
				k.Victims = processes(g, victims[i:i+1])
				// Named once: a later kill must not name it again.
				delete(c.seen, victims[i].Pid)
				g.own.note(victims[i], nil)
			}
			g.reporter.Counted(k)
		}
	}
	g.reportGroupKills(c, lastCheck)
	if (waiting || !counted) && !lastCheck {
		c.oomChecks++
		g.setOOMCheck(c, g.clock.Now().Add(oomCheckDelays[c.oomChecks]-oomCheckDelays[c.oomChecks-1]))
		return
	}
	c.seen, c.oomSeen = nil, nil
}

// groupKill is a kernel memory.oom.group kill counted in cgroup rel and
// not yet reported: by the guarded cgroup c whose OOM notification led
// to the count, which names the victims.
type groupKill struct {
	c          *cg
	group      string // the cgroup with memory.oom.group set (rel or above it)
	oomKills   uint64 // rel's count at the last read
	groupKills uint64 // the group's oom_group_kill then; 0: no such counter
}

// noteGroupKill notes a moved count n in rel, of a kill of group, for c
// to report (reportGroupKills). A count already noted under another
// guarded cgroup (the pod's limit and the container's, both notified)
// stays with the first. A count that moved after its group kill was
// reported is that kill's still: the kernel's scan signals (and counts)
// the group's processes one after another, printing a line for each, and
// on a slow console that goes on after the guard has looked (as on the
// v2 node in the VM). The group's own oom_group_kill (5.17+) tells a new
// group kill from the rest of one reported.
func (g *Guard) noteGroupKill(c *cg, rel, group string, n uint64) {
	if k, ok := g.groupKills[rel]; ok {
		k.oomKills = max(k.oomKills, n)
		return
	}
	gk, err := g.mem.OOMGroupKills(group)
	if gc := g.known[group]; err == nil && gc != nil && gk <= gc.groupKills {
		klog.V(2).Infof("cgroup %s: %d more kills counted, of the memory.oom.group kill of %s already reported", rel, n-g.known[rel].oomKills, group)
		g.known[rel].oomKills = n
		return
	}
	if err != nil {
		gk = 0
	}
	g.groupKills[rel] = &groupKill{c: c, group: group, oomKills: n, groupKills: gk}
}

// reportGroupKills reports c's noted group kills whose cgroup is gone,
// and with all, every one: ONE fact per cgroup whose count moved (a
// container), naming all its processes seen before and gone after,
// however many processes and threads the kernel counted.
func (g *Guard) reportGroupKills(c *cg, all bool) {
	for rel, k := range g.groupKills {
		if k.c != c {
			continue
		}
		if !all && g.mem.FS().Exists(rel) {
			continue
		}
		d, known := g.known[rel]
		delete(g.groupKills, rel)
		if known {
			if n, err := g.mem.OOMKills(rel); err == nil {
				k.oomKills = max(k.oomKills, n)
			}
			if k.oomKills <= d.oomKills {
				continue // reported under another guarded cgroup
			}
			d.oomKills = k.oomKills
		}
		if gc := g.known[k.group]; gc != nil {
			gc.groupKills = max(gc.groupKills, k.groupKills)
		}
		victims := g.groupVictims(c, rel)
		for _, v := range victims {
			delete(c.seen, v.Pid) // named once
			g.own.note(v, nil)
		}
		usage, _ := g.mem.Usage(c.rel)
		stat, _ := g.mem.Stat(c.rel)
		g.reporter.Counted(event.CounterKill{
			At: g.clock.Now(), OOMCgroup: g.absPath(c.rel), ProcCgroup: g.absPath(rel),
			Threshold: c.threshold, Usage: usage, Limit: c.limit, Stats: stat.Text,
			Victims: processes(g, victims), OOMGroup: g.absPath(k.group),
		})
	}
}

// inferKernelKills reports the kernel's OOM kills in cgroup rel (c or below
// it) on a kernel whose memory.oom_control has no oom_kill counter (3.10 to
// 4.12: only oom_kill_disable and under_oom), and returns how many. The OOM
// eventfd told that the kernel's OOM path ran for c; a kill is a process
// seen in rel in this episode (at the early threshold or at the
// notification) that is now
//   - dying or dead of SIGKILL (exit code or pending signal: FateOf), or
//   - gone without a trace (already reaped), having been listed at the
//     notification itself,
//
// and that the guard did not kill itself. Each is reported once (it leaves
// c.seen), naming the victim; the reconciler joins it, by pid, with the
// kernel log's record of the same kill (3.10's "Kill process ... or
// sacrifice child" formats included), so it is reported once even when
// both saw it. A notification after which nothing died of SIGKILL (the
// victim was already exiting, oom_kill_disable is set, a task was
// sacrificed elsewhere) reports nothing. What is lost against the counter:
// a victim that had already left the cgroup's process list when the
// guard looked at the notification and was reaped before the check is
// reported from the kernel log alone, not without it.
func (g *Guard) inferKernelKills(c *cg, rel string, usage uint64, statText string) int {
	var victims []kill.Candidate
	for pid, k := range c.seen {
		if k.Cgroup != rel || g.own.killed(k) {
			continue
		}
		switch g.killer.FateOf(k) {
		case kill.Killed:
		case kill.Vanished:
			if st, ok := c.oomSeen[pid]; !ok || st != k.StartTime {
				continue
			}
		default:
			continue
		}
		victims = append(victims, k)
		delete(c.seen, pid)
		// A victim still dying is listed again at the next notification:
		// its death is accounted for.
		g.own.note(k, nil)
	}
	slices.SortFunc(victims, func(a, b kill.Candidate) int { return cmp.Compare(b.OOMScore, a.OOMScore) })
	for i := range victims {
		g.reporter.Counted(event.CounterKill{
			At: g.clock.Now(), OOMCgroup: g.absPath(c.rel), ProcCgroup: g.absPath(rel),
			Threshold: c.threshold, Usage: usage, Limit: c.limit, Stats: statText,
			Victims: processes(g, victims[i:i+1]),
		})
	}
	return len(victims)
}

// ownKills remembers the processes whose deaths are accounted for: those
// the guard itself killed, and the kernel's victims already reported,
// for a minute (a victim can take that long to die on a struggling
// node), so that, without the oom_kill counter, no death is taken for a
// kernel kill, or reported, twice. Noted from the loop and from the
// goroutines that kill the rest of a container.
type ownKills struct {
	mu    sync.Mutex
	procs map[int]ownKill
}

type ownKill struct {
	startTime uint64
	at        time.Time
}

const ownKillMemory = time.Minute

func (o *ownKills) note(k kill.Candidate, err error) {
	if err != nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now() // wall time, not the loop's clock: noted off the loop too
	if o.procs == nil {
		o.procs = map[int]ownKill{}
	}
	for pid, e := range o.procs {
		if now.Sub(e.at) > ownKillMemory {
			delete(o.procs, pid)
		}
	}
	o.procs[k.Pid] = ownKill{k.StartTime, now}
}

func (o *ownKills) killed(k kill.Candidate) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	e, ok := o.procs[k.Pid]
	return ok && e.startTime == k.StartTime
}

// goneFrom lists the processes seen in cgroup rel (below c) that no longer run.
func (g *Guard) goneFrom(c *cg, rel string) []kill.Candidate {
	var gone []kill.Candidate
	for _, k := range c.seen {
		if st, ok := c.ours[k.Pid]; ok && st == k.StartTime {
			continue // the guard's own kill
		}
		// Not the guard's own kills, nor a victim already named.
		if k.Cgroup == rel && !g.own.killed(k) && !g.killer.Alive(k) {
			gone = append(gone, k)
		}
	}
	// The largest first: the kernel picks by size, so with several gone
	// the first is the likeliest victim of the first kill.
	slices.SortFunc(gone, func(a, b kill.Candidate) int { return cmp.Compare(b.OOMScore, a.OOMScore) })
	return gone
}

// groupVictims lists the processes seen in cgroup rel (below c) that a
// group kill took: gone, or dying of the kernel's SIGKILL (the scan goes
// on signalling while it prints), not the guard's own kills. The largest
// first, as goneFrom.
func (g *Guard) groupVictims(c *cg, rel string) []kill.Candidate {
	var took []kill.Candidate
	for _, k := range c.seen {
		if st, ok := c.ours[k.Pid]; ok && st == k.StartTime || k.Cgroup != rel || g.own.killed(k) {
			continue
		}
		if g.killer.FateOf(k) != kill.Running {
			took = append(took, k)
		}
	}
	slices.SortFunc(took, func(a, b kill.Candidate) int { return cmp.Compare(b.OOMScore, a.OOMScore) })
	return took
}

// killedOne notes a process the guard killed in c: it is not the kernel's
// victim when the kernel's count moves next (issue 12: 15 CgroupOOM
// events named a process the guard had killed). The last 64 are kept.
func (c *cg) killedOne(k kill.Candidate) {
	if c.ours == nil || len(c.ours) >= 64 {
		c.ours = map[int]uint64{}
	}
	c.ours[k.Pid] = k.StartTime
	delete(c.seen, k.Pid)
}
