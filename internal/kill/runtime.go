package kill

import (
	"context"
	"time"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/identity"
)

// ViaRuntime kills a whole container through its runtime where one has it,
// so that the runtime records the exit and its shims stay consistent, and
// falls back to the cgroup-level kill (freeze, kill, thaw) where none does.
type ViaRuntime struct {
	Killer
	Stoppers []identity.Stopper
	// Timeout bounds the runtime's answer: the guard loop waits for it.
	Timeout time.Duration
}

// KillContainer stops the container of cgroup rel. The time is when the
// stop was asked for (runtime) or the first signal sent (cgroup).
func (k ViaRuntime) KillContainer(rel string) ([]Candidate, time.Time, error) {
	id, ok := identity.FromPath(k.Mem.Path(rel, ""))
	if !ok || id.ContainerID == "" || id.Conmon || len(k.Stoppers) == 0 {
		return k.Killer.KillContainer(rel)
	}
	cands, _ := Candidates(k.Mem, k.Proc, rel, cgroup.Unlimited)
	ctx, cancel := context.WithTimeout(context.Background(), k.Timeout)
	defer cancel()
	asked := time.Now()
	err := identity.StopFirst(ctx, id, k.Stoppers...)
	if err == nil {
		klog.V(2).Infof("cgroup %s: container %s stopped through its runtime", rel, id.ContainerID)
		return cands, asked, nil
	}
	klog.Warningf("cgroup %s: no runtime stopped container %s (%v): killing it through the cgroup", rel, id.ContainerID, err)
	return k.Killer.KillContainer(rel)
}
