package main

import (
	"runtime"
	"testing"
)

// burst keeps the test's allocation live until the test drops it.
var burst [][]byte

// What a burst made the runtime hold, and no longer needs, goes back to
// the kernel; what it holds within the slack stays.
func TestGrownHeapIsReturned(t *testing.T) {
	runtime.GC()
	base := heldByRuntime()
	if got := returnGrownHeap(base + heapSlack); got != base+heapSlack {
		t.Fatalf("nothing grown beyond the slack, yet returned: %d, want %d", got, base+heapSlack)
	}
	for i := 0; i < 32; i++ {
		b := make([]byte, 1<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1 // touched: held from the kernel
		}
		burst = append(burst, b)
	}
	grown := heldByRuntime()
	burst = nil
	if grown < base+16<<20 {
		t.Fatalf("the runtime holds %.1f MiB after a burst of 32 MiB, %.1f MiB before", float64(grown)/(1<<20), float64(base)/(1<<20))
	}
	after := returnGrownHeap(base)
	if after > base+heapSlack {
		t.Fatalf("the runtime holds %.1f MiB after the return, %.1f MiB before the burst, %.1f MiB during it",
			float64(after)/(1<<20), float64(base)/(1<<20), float64(grown)/(1<<20))
	}
	t.Logf("held: %.1f MiB before the burst, %.1f MiB during it, %.1f MiB after the return", float64(base)/(1<<20), float64(grown)/(1<<20), float64(after)/(1<<20))
}
