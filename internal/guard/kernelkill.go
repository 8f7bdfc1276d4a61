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
	c.oomCheckAt = notified.Add(oomCheckDelays[0])
}

// oomCheckDelays are when, after the kernel's OOM notification, the kill
// counters are read: the kernel usually has killed within a millisecond,
// but a victim can take longer to choose or to die, and the event should
// name it.
var oomCheckDelays = [...]time.Duration{time.Millisecond, 10 * time.Millisecond, 50 * time.Millisecond}

// countKernelKills reports kernel OOM kills in c and its descendants since
// the last count (v1's oom_kill is charged to the victim's own cgroup), one
// fact per kill, naming the victim where the processes seen before the
// kill tell which one is gone.
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
			k := event.CounterKill{
				At: g.clock.Now(), OOMCgroup: g.absPath(c.rel), ProcCgroup: g.absPath(rel),
				Threshold: c.threshold, Usage: usage, Limit: c.limit, Stats: stat.Text,
			}
			if i < uint64(len(victims)) {
				k.Victim = &processes(g, victims[i:i+1])[0]
				// Named once: a later kill must not name it again.
				delete(c.seen, victims[i].Pid)
				g.own.note(victims[i], nil)
			}
			g.reporter.Counted(k)
		}
	}
	if (waiting || !counted) && !lastCheck {
		c.oomChecks++
		c.oomCheckAt = g.clock.Now().Add(oomCheckDelays[c.oomChecks] - oomCheckDelays[c.oomChecks-1])
		return
	}
	c.seen, c.oomSeen = nil, nil
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
			Victim: &processes(g, victims[i:i+1])[0],
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
