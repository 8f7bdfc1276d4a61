package guard

import (
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/kill"
)

// One spike, one kill: after a kill the cgroup cools down, so that the
// victim's memory, still charged while it dies, does not cost a second
// kill. But only until that memory is gone: a workload whose supervisor
// starts a new worker as soon as one dies fills the cgroup again within
// tens of milliseconds, and a cgroup left unguarded for a fixed --guard-ms
// meanwhile is the kernel's to kill in (half of the kills, measured). So
// the cooldown ends as soon as the victim has exited, which its pidfd in
// the epoll set tells at once (without a pidfd: gone from /proc, asked at
// each look), or usage is below the threshold; --guard-ms is only its
// upper bound. A crossing after that is a new spike.

// coolDown starts the cooldown after victim was killed: its pidfd (a copy
// the Target made at the kill) goes in the epoll set, and turns readable
// at once if the victim is already gone.
func (g *Guard) coolDown(c *cg, victim Victim, usage uint64) {
	g.endCooldown(c)
	c.killUsage = usage
	c.lastAction = g.clock.Now()
	g.setRecheck(c, c.lastAction.Add(g.cfg.GuardInterval))
	c.victim = victim.Inspected()
	fd, err := victim.ExitFd()
	if err != nil {
		// No pidfd (a kernel before 5.3, a lack of fds): each look asks
		// /proc, and the cooldown's end is looked for every recheck.
		g.setRecheck(c, g.clock.Now().Add(g.cfg.RecheckInterval))
		return
	}
	if err := g.poller.Add(fd); err != nil {
		unix.Close(fd)
		g.setRecheck(c, g.clock.Now().Add(g.cfg.RecheckInterval))
		return
	}
	c.victimFd, c.victimWatch = fd, true
	g.byFd[fd] = c
}

// victimGone tells whether the cooling cgroup's victim has exited.
func (g *Guard) victimGone(c *cg) bool {
	if c.victim.Pid == 0 {
		return false // nothing killed (noop, a failed kill): the bound alone
	}
	if c.victimWatch {
		// The exit may be in the batch epoll_wait just returned, behind
		// this crossing: ask the pidfd itself.
		fds := []unix.PollFd{{Fd: int32(c.victimFd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		return err == nil && n > 0
	}
	return g.killer.Exited(c.victim)
}

// victimExited: the victim's pidfd turned readable. The cooldown ends; the
// cgroup is looked at again a recheck interval later, not at once: the
// uncharging of a dead process's pages can trail its exit by a moment
// (seen under emulation), and a crossing meanwhile is acted on at once.
func (g *Guard) victimExited(c *cg, notified time.Time) {
	klog.V(4).Infof("cgroup %s: victim pid %d exited %v after the kill", c.rel, c.victim.Pid, notified.Sub(c.lastAction).Round(time.Microsecond))
	g.endCooldown(c)
	g.setRecheck(c, notified.Add(g.cfg.RecheckInterval))
}

// endCooldown ends c's cooldown, if any: its victim is gone, or no longer
// the point.
func (g *Guard) endCooldown(c *cg) {
	if c.victimWatch {
		_ = g.poller.Remove(c.victimFd)
		delete(g.byFd, c.victimFd)
		unix.Close(c.victimFd)
		c.victimWatch = false
	}
	c.victim, c.lastAction = kill.Candidate{}, time.Time{}
}
