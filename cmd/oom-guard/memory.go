package main

import (
	"runtime/debug"
	"runtime/metrics"
	"time"

	"k8s.io/klog/v2"
)

// The Go runtime keeps the heap a burst of cgroups needed (a thousand made
// and removed at once): its next collection is due only once the heap has
// grown to twice what was live at the last one, which an idle guard takes
// minutes to allocate, and until then the pages stay charged to the
// guard's cgroup (measured: 20.3 MiB before ten bursts of 1,000 cgroups,
// 28.1 MiB after, at rest). So once a minute, if the runtime holds more
// than heapSlack beyond what it held after the last return, the garbage
// is collected and the free pages are given back to the kernel: a
// collection of a heap of a few MiB, off the real-time loop.
const (
	heapReturnEvery = time.Minute
	heapSlack       = 4 << 20
)

// returnHeap runs until stop is closed; the function it returns waits
// for it.
func returnHeap(stop <-chan struct{}) (wait func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(heapReturnEvery)
		defer tick.Stop()
		kept := heldByRuntime()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			kept = returnGrownHeap(kept)
		}
	}()
	return func() { <-done }
}

// returnGrownHeap collects the garbage and gives the free pages back if
// the runtime holds more than heapSlack beyond kept; it returns what the
// runtime holds then.
func returnGrownHeap(kept uint64) uint64 {
	held := heldByRuntime()
	if held <= kept+heapSlack {
		return kept
	}
	debug.FreeOSMemory()
	now := heldByRuntime()
	klog.V(2).Infof("memory: the Go runtime held %.1f MiB; %.1f MiB after returning its free pages", float64(held)/(1<<20), float64(now)/(1<<20))
	return now
}

// heldByRuntime is the memory the Go runtime holds from the kernel: all it
// mapped, less what it has returned.
func heldByRuntime() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 || s[1].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64() - s[1].Value.Uint64()
}
