package guard

import "time"

// The loop's busy time: from epoll_wait's return to the next call. While
// busy, the loop serves no crossing, so its longest busy stretch bounds how
// late the guard can be to any cgroup. Each turn costs one histogram
// observation and one atomic compare.

// noteBusy records one turn's busy time.
func (g *Guard) noteBusy(d time.Duration) {
	g.metrics.LoopBusy(d)
	for {
		old := g.busyMax.Load()
		if int64(d) <= old || g.busyMax.CompareAndSwap(old, int64(d)) {
			return
		}
	}
}

// TakeLoopBusyMax returns the longest busy turn of the loop since the
// last call, and starts over.
func (g *Guard) TakeLoopBusyMax() time.Duration { return time.Duration(g.busyMax.Swap(0)) }

// ResetInotifyNow makes the loop re-create its inotify watches (and walk
// the hierarchy after) now rather than at the next --inotifyResetSeconds:
// the benchmark times the loop during resets with it.
func (g *Guard) ResetInotifyNow() {
	select {
	case g.resetAsk <- struct{}{}:
	default:
	}
	if g.poller != nil {
		g.poller.Wake()
	}
}
