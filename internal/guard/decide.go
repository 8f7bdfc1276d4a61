// Package guard is the decision loop: it keeps a threshold just under every
// limited memory cgroup, and when the kernel says usage crossed it, decides
// (re-arm, stand down for page cache, or act by policy) and acts before the
// kernel's own OOM killer has to. It depends only on the interfaces in
// ports.go; cmd/oom-guard wires the real kernel, killer and sinks in.
package guard

import (
	"fmt"
	"time"
)

// Policy is what the guard does when a cgroup crosses its threshold.
type Policy string

const (
	// PolicyProcess kills the process with the highest oom_score.
	PolicyProcess Policy = "process"
	// PolicyContainer kills every process of the victim's container cgroup.
	PolicyContainer Policy = "container"
	// PolicyNoop only reports what it would have killed.
	PolicyNoop Policy = "noop"
)

// ParsePolicy accepts the --policy values.
func ParsePolicy(s string) (Policy, error) {
	switch p := Policy(s); p {
	case PolicyProcess, PolicyContainer, PolicyNoop:
		return p, nil
	}
	return "", fmt.Errorf("unknown policy %q (want process, container or noop)", s)
}

// Title is the policy as the seed's event spells it ("Container").
func (p Policy) Title() string {
	if p == "" {
		return ""
	}
	return string(p[0]-'a'+'A') + string(p[1:])
}

// Config holds every tunable of the guard. Sizes are bytes.
type Config struct {
	MarginRatio          float64
	MinMargin, MaxMargin uint64
	// ThresholdLag: how far past a threshold usage can be when the
	// kernel says it crossed (v1: notify.V1ThresholdLag; 0 on v2, whose
	// memory.high tripwire stops the allocating task at the crossing).
	// The margin is at least MinMargin plus this, so that MinMargin is
	// left for the guard to act in. Set by New from the notifier.
	ThresholdLag uint64
	Policy       Policy
	// GuardInterval: after acting on a cgroup, give the freed memory this
	// long to show before acting on it again (--guard-ms): one spike, one kill.
	GuardInterval time.Duration
	// RecheckInterval: how often a cgroup still above its threshold is
	// looked at again while the guard stands down or waits (the kernel
	// only notifies crossings, not a cgroup that stays above).
	RecheckInterval time.Duration
	// ReclaimableRatio: stand down while the cgroup's reclaimable page
	// cache is at least this fraction of its limit; 0 never stands down.
	ReclaimableRatio float64
	// ReclaimBudget bounds one reclaim request (force_empty, memory.reclaim).
	ReclaimBudget time.Duration
	// OpenSoftLimit also sets each guarded cgroup's soft limit at the
	// threshold, restored when the guard lets go of the cgroup.
	OpenSoftLimit bool
	// HighTripwire, on cgroup v2 under a killing policy, puts memory.high
	// at the threshold of each guarded cgroup whose memory.high is unset,
	// restored when the guard lets go. v2 has no usage-threshold eventfd:
	// without it the crossing is seen only by sampling memory.current,
	// which a guard thread held off its CPU for a millisecond misses. With
	// it the allocating task itself, at the crossing, counts a "high"
	// event (waking the guard at once) and reclaims and is throttled in
	// its own context until the guard has acted.
	HighTripwire bool
	WalkInterval time.Duration
	InotifyReset time.Duration
	// PrepareAhead: when usage comes within this much (or the margin, if
	// larger) of the threshold, the guard does the slow part of a kill
	// ahead of need: reads memory.stat, scores the processes and opens the
	// victim's pidfd. Near its limit a cgroup charges in 2 MiB steps and
	// the kernel keeps every CPU busy draining charge caches, so work left
	// to the threshold crossing is what loses the race.
	PrepareAhead uint64
	// PrepareMaxAge: an older preparation is done again at the crossing.
	PrepareMaxAge time.Duration
	// RealtimePriority runs the loop's thread under SCHED_FIFO at this
	// priority (0: normal scheduling); see useRealtime.
	RealtimePriority int
	// HoldOOM (--v1-hold-oom) sets oom_kill_disable in every cgroup guarded
	// on cgroup v1 (3.12+, a killing policy, a StateFile), so that a task
	// meeting the limit before the guard has acted waits for the guard's
	// kill instead of the kernel killing (hold.go).
	HoldOOM bool
	// StateFile records what the guard writes into cgroups (soft limits,
	// memory.high) and the values to restore, so that a guard started
	// after one that died restores the operator's values (record.go);
	// "" keeps no record.
	StateFile string
	// Registrars is how many registrations of notifications run at once
	// (register.go); 0: registrars.
	Registrars int
}

// DefaultConfig is the seed DaemonSet's configuration.
func DefaultConfig() Config {
	return Config{
		MarginRatio: 0.02, MinMargin: 1 << 20, MaxMargin: 30 << 20,
		Policy: PolicyContainer, GuardInterval: 50 * time.Millisecond,
		RecheckInterval: 5 * time.Millisecond, ReclaimableRatio: 0.1,
		ReclaimBudget: 100 * time.Millisecond,
		WalkInterval:  277 * time.Second, InotifyReset: 701 * time.Second,
		PrepareAhead: 16 << 20, PrepareMaxAge: time.Second,
		RealtimePriority: 2, HighTripwire: true, HoldOOM: true,
	}
}

// Validate reports the first invalid setting.
func (c Config) Validate() error {
	switch {
	case !(c.MarginRatio > 0 && c.MarginRatio < 1):
		return fmt.Errorf("margin ratio %v outside (0,1)", c.MarginRatio)
	case c.MinMargin > c.MaxMargin:
		return fmt.Errorf("min margin %d MiB above max margin %d MiB", c.MinMargin>>20, c.MaxMargin>>20)
	case c.ReclaimableRatio < 0 || c.ReclaimableRatio >= 1:
		return fmt.Errorf("reclaimable ratio %v outside [0,1)", c.ReclaimableRatio)
	case c.GuardInterval < 0 || c.RecheckInterval <= 0 || c.ReclaimBudget <= 0:
		return fmt.Errorf("guard, recheck and reclaim intervals must be positive")
	case c.Registrars < 0:
		return fmt.Errorf("registrars %d below 0", c.Registrars)
	case c.WalkInterval <= 0 || c.InotifyReset <= 0:
		return fmt.Errorf("walk and inotify reset intervals must be positive")
	}
	if err := ValidRealtimePriority(c.RealtimePriority); err != nil {
		return err
	}
	_, err := ParsePolicy(string(c.Policy))
	return err
}

// Threshold is limit - clamp(limit x ratio, min + lag, max): the seed's
// margin, but never less than MinMargin past the point where the kernel
// is sure to have said the threshold was crossed. Without the lag a 64
// MiB cgroup's margin (1.28 MiB) was all but used up before v1 signalled
// a storm's crossings, and the kernel killed in 1 to 14 of 100 cgroups
// (bench/preempt, storm row). A limit so small that the margin would eat
// half of it keeps half instead, so the guard never fires on an idle
// cgroup.
func (c Config) Threshold(limit uint64) uint64 {
	return limit - c.Margin(limit)
}

// Margin is limit - Threshold(limit).
func (c Config) Margin(limit uint64) uint64 {
	floor := c.MinMargin + c.ThresholdLag
	margin := uint64(float64(limit) * c.MarginRatio)
	margin = min(margin, c.MaxMargin)
	margin = max(margin, floor)
	return min(margin, limit/2)
}

// EarlyThreshold is where the guard prepares a kill (see PrepareAhead):
// threshold - max(margin, min(PrepareAhead, ReclaimableRatio x limit / 2)),
// never below half the limit.
func (c Config) EarlyThreshold(limit uint64) uint64 {
	th := c.Threshold(limit)
	ahead := max(limit-th, c.prepareAhead(limit))
	return max(th-min(ahead, th), limit/2)
}

// Verdict is what the guard decides on looking at a cgroup.
type Verdict int

const (
	// Below: usage is under the threshold; nothing to do.
	Below Verdict = iota
	// Rearm: the limit changed since the threshold was set.
	Rearm
	// Cooling: the guard acted on this cgroup less than GuardInterval ago.
	Cooling
	// StandDown: above the threshold, but enough page cache is reclaimable
	// that the kernel will reclaim rather than OOM-kill.
	StandDown
	// Act: kill (or, with noop, report) by policy.
	Act
)

var verdictNames = [...]string{"below", "rearm", "cooling", "stand-down", "act"}

func (v Verdict) String() string { return verdictNames[v] }

// Look is what the guard read of a cgroup when it looked.
type Look struct {
	Usage, Limit uint64
	// ArmedLimit is the limit the current threshold was computed from.
	ArmedLimit uint64
	// SinceAction is the time since the guard last acted on the cgroup;
	// negative if it never did.
	SinceAction time.Duration
}

// Assess is the first, cheap stage: from usage and limit alone. A result
// of Act means "read memory.stat and call Judge".
func (c Config) Assess(l Look) Verdict {
	switch {
	case l.Limit != l.ArmedLimit:
		return Rearm
	case l.Usage < c.Threshold(l.Limit):
		return Below
	case l.SinceAction >= 0 && l.SinceAction < c.GuardInterval:
		return Cooling
	}
	return Act
}

// Judge is the second stage, once memory.stat is read.
func (c Config) Judge(limit, reclaimable uint64) Verdict {
	if c.ReclaimableRatio > 0 && float64(reclaimable) >= c.ReclaimableRatio*float64(limit) {
		return StandDown
	}
	return Act
}

// prepareAhead keeps the early threshold within half the stand-down amount
// of the threshold: the page cache can then have grown by less than that
// since the preparation, and a preparation that found little cache decides
// the crossing without reading memory.stat again.
func (c Config) prepareAhead(limit uint64) uint64 {
	if c.ReclaimableRatio <= 0 {
		return c.PrepareAhead
	}
	return min(c.PrepareAhead, uint64(c.ReclaimableRatio*float64(limit)/2))
}
