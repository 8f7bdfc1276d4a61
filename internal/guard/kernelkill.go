package guard

import (
	"cmp"
	"slices"
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
				At: time.Now(), OOMCgroup: g.absPath(c.rel), ProcCgroup: g.absPath(rel),
				Threshold: c.threshold, Usage: usage, Limit: c.limit, Stats: stat.Text,
			}
			if i < uint64(len(victims)) {
				k.Victim = &processes(g, victims[i:i+1])[0]
			}
			g.reporter.Counted(k)
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
		if st, ok := c.ours[k.Pid]; ok && st == k.StartTime {
			continue // the guard's own kill
		}
		if k.Cgroup == rel && !g.killer.Alive(k) {
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
