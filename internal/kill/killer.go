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

func (k Killer) Candidates(rel string) ([]Candidate, error) {
	return Candidates(k.Mem, k.Proc, rel)
}

func (k Killer) KillProcess(c Candidate) (time.Time, error) { return k.Proc.Process(c) }

// KillContainer kills every process of rel; the time is when the first
// signal was sent.
func (k Killer) KillContainer(rel string) ([]Candidate, time.Time, error) {
	killed, first, err := k.Proc.cgroup(k.Mem, k.Freezer, rel, k.Self)
	return killed, first, err
}
