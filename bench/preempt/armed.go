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
//
// It also counts hold waits: the races in which the task reached the limit
// before the guard had killed and waited for its kill (--v1-hold-oom),
// i.e. races the guard won only because the cgroup was held.
type armed struct {
	guard.NopMetrics
	n         atomic.Int64
	holdWaits atomic.Int64
}

func (a *armed) SetGuarded(n int) { a.n.Store(int64(n)) }
func (a *armed) HoldWait()        { a.holdWaits.Add(1) }

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
