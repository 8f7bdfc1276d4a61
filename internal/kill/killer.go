package kill

import (
	"time"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/kernel"
)

// Killer kills within one memory hierarchy.
type Killer struct {
	Mem *cgroup.FS
	// Freezer is the v1 freezer at the same relative place; nil if none
	// (and on v2, which freezes in Mem itself).
	Freezer *cgroup.FS
	// Unified says Mem is a cgroup v2 hierarchy: a cgroup is killed whole
	// with cgroup.kill and frozen with cgroup.freeze.
	Unified bool
	Proc    Proc
	Self    int // the guard's own pid, never killed
}

func (k Killer) Candidates(rel string, limit uint64) ([]Candidate, error) {
	return Candidates(k.Mem, k.Proc, rel, limit)
}

// Open holds c for a kill (Proc.Open), with what tells at the kill
// whether it is still inside this hierarchy's cgroup (Target.Recheck).
func (k Killer) Open(c Candidate) (*Target, error) {
	t, err := k.Proc.Open(c)
	if err != nil {
		return nil, err
	}
	k.openPlace(t)
	return t, nil
}

func (k Killer) Alive(c Candidate) bool { return k.Proc.Alive(c) }

func (k Killer) FateOf(c Candidate) Fate { return k.Proc.FateOf(c) }

func (k Killer) Exited(c Candidate) bool { return k.Proc.Exited(c) }

// KillContainer kills every process of rel. The time is when the first
// signal was sent.
func (k Killer) KillContainer(rel string) ([]Candidate, time.Time, error) {
	return k.kill(rel, nil)
}

// KillGroup kills rel as the kernel kills a memory.oom.group: every
// process but the exempt (oom_score_adj -1000).
func (k Killer) KillGroup(rel string) ([]Candidate, time.Time, error) {
	return k.kill(rel, func(c Candidate) bool { return c.OOMScoreAdj == OOMScoreAdjMin })
}

// kill kills rel's processes but those spare names: on v2 with one write
// to cgroup.kill (5.14+) when there are none to spare (and the guard is not
// among them), else one by one, frozen first (cgroup.freeze, 5.2+).
func (k Killer) kill(rel string, spare func(Candidate) bool) ([]Candidate, time.Time, error) {
	if k.Unified && kernel.HasCgroupKill(k.Mem.Root) && !k.anyToSpare(rel, spare) {
		killed, sent, ok, err := k.Proc.killAtOnce(k.Mem, rel)
		if ok {
			return killed, sent, err
		}
	}
	return k.Proc.killEach(k.Mem, k.freezer(), rel, k.Self, spare)
}

// anyToSpare tells whether rel holds a process that must be spared. A
// list that could not be completed may hide one: then it says yes, so that
// no cgroup.kill reaches a process nobody looked at.
func (k Killer) anyToSpare(rel string, spare func(Candidate) bool) bool {
	cands, err := Candidates(k.Mem, k.Proc, rel, cgroup.Unlimited)
	if err != nil {
		return true
	}
	for _, c := range cands {
		if c.Pid == k.Self || spare != nil && spare(c) {
			return true
		}
	}
	return false
}

func (k Killer) freezer() cgroupFreezer {
	switch {
	case k.Unified:
		return v2Freezer{k.Mem}
	case k.Freezer != nil:
		return v1Freezer{k.Freezer}
	}
	return nil
}
