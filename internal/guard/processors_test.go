package guard

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Each Run under way adds one Go processor for its loop, and the last to
// end leaves GOMAXPROCS as it found it.
func TestReserveProcessor(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	first := reserveProcessor()
	if got := runtime.GOMAXPROCS(0); got != before+1 {
		t.Errorf("one guard: GOMAXPROCS %d, want %d", got, before+1)
	}
	second := reserveProcessor()
	if got := runtime.GOMAXPROCS(0); got != before+2 {
		t.Errorf("two guards: GOMAXPROCS %d, want %d", got, before+2)
	}
	first()
	second()
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Errorf("after both: GOMAXPROCS %d, want %d", got, before)
	}
}

// The registrars' readings run at most one fewer at once than the
// processors there were (at least one), however many registrars wait.
func TestBackgroundTokensBoundReadings(t *testing.T) {
	for _, procs := range []int{1, 2, 8} {
		g := &Guard{tokens: backgroundTokens(procs)}
		var running, most atomic.Int32
		var wg sync.WaitGroup
		for i := 0; i < 64; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				g.inBackground(func() {
					n := running.Add(1)
					for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
					}
					time.Sleep(time.Millisecond)
					running.Add(-1)
				})
			}()
		}
		wg.Wait()
		if want := int32(max(procs-1, 1)); most.Load() != want {
			t.Errorf("%d processors: %d readings at once, want %d", procs, most.Load(), want)
		}
	}
}
