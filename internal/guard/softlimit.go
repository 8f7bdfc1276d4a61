package guard

import (
	"fmt"
	"os"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"k8s.io/klog/v2"
)

// setSoftLimit puts c's soft limit (v1 memory.soft_limit_in_bytes, v2
// memory.high) at its threshold: everywhere with --openSoftLimit, and as the
// v2 tripwire (Config.HighTripwire) where memory.high is not somebody else's.
func (g *Guard) setSoftLimit(c *cg) {
	if !g.cfg.OpenSoftLimit && !g.tripwire() {
		g.restoreRecorded(c, softLimitSetting,
			func() (uint64, error) { return g.mem.SoftLimit(c.rel) },
			func(v uint64) error { return g.mem.SetSoftLimit(c.rel, v) })
		return
	}
	v, err := g.mem.SoftLimit(c.rel)
	if err != nil {
		g.warnUnlessGone(c, "read soft limit", err)
		return
	}
	if !c.softLimitSaved {
		v = g.recordedOriginal(c, softLimitSetting, v) // a dead guard's value is not the operator's (record.go)
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
	if err := g.recordWrite(c, softLimitSetting, c.softLimit, pageFloor(c.threshold)); err != nil {
		klog.Warningf("cgroup %s: soft limit not set: %v", c.rel, err)
		return
	}
	if err := g.mem.SetSoftLimit(c.rel, c.threshold); err != nil {
		g.warnUnlessGone(c, fmt.Sprintf("the kernel refused the soft limit %s (left at %s)", bytesMiB(c.threshold), bytesMiB(v)), err)
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
		g.recordRestored(c, softLimitSetting)
		return
	}
	if err == nil {
		err = g.mem.SetSoftLimit(c.rel, c.softLimit)
	}
	if err != nil && !cgroup.IsNotExist(err) {
		klog.Warningf("cgroup %s: restore soft limit: %v", c.rel, err)
		return // the record stays: a successor tries again
	}
	g.recordRestored(c, softLimitSetting)
}

// pageFloor is bytes as the kernel keeps a memory limit: in whole pages.
func pageFloor(bytes uint64) uint64 {
	page := uint64(os.Getpagesize())
	return bytes / page * page
}
