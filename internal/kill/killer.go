package kill

import (
	"time"

	"github.com/oom-guard/oom-guard/internal/cgroup"
)

// Killer kills within one memory hierarchy.
type Killer struct {
	Mem     *cgroup.FS
	Freezer *cgroup.FS // v1 freezer at the same relative place; nil if none
	Proc    Proc
	Self    int // the guard's own pid, never killed
}

func (k Killer) Candidates(rel string, limit uint64) ([]Candidate, error) {
	return Candidates(k.Mem, k.Proc, rel, limit)
}

func (k Killer) Open(c Candidate) (*Target, error) { return k.Proc.Open(c) }

func (k Killer) Alive(c Candidate) bool { return k.Proc.Alive(c) }

// KillContainer kills every process of rel. The time is when the first
// signal was sent.
func (k Killer) KillContainer(rel string) ([]Candidate, time.Time, error) {
	return k.Proc.cgroup(k.Mem, k.Freezer, rel, k.Self)
}
