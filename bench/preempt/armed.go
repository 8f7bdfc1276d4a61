package main

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/oom-guard/oom-guard/internal/guard"
)

// armed is the guard's Metrics, reduced to what the benchmark needs: how
// many cgroups are guarded, so that a run starts once its cgroup is armed
// (registering a cgroup's thresholds takes the kernel tens of
// milliseconds; a run started sooner would time that, not the guard).
type armed struct {
	guard.NopMetrics
	n atomic.Int64
}

func (a *armed) SetGuarded(n int) { a.n.Store(int64(n)) }

// wait waits until n cgroups are guarded.
func (a *armed) wait(n int64) error {
	deadline := time.Now().Add(5 * time.Second)
	for a.n.Load() != n {
		if time.Now().After(deadline) {
			return fmt.Errorf("guarding %d cgroups after 5s, want %d", a.n.Load(), n)
		}
		time.Sleep(100 * time.Microsecond)
	}
	return nil
}
