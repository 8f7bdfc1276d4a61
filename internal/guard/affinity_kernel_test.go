package guard

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// threadPlacer on the running kernel: Follow keeps the calling thread on
// the one CPU, Release gives it back every CPU it had, and a CPU it may
// not use is refused without moving it.
func TestThreadPlacerMovesTheCallingThread(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var before unix.CPUSet
	if err := unix.SchedGetaffinity(0, &before); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = unix.SchedSetaffinity(0, &before) }()
	last := -1
	for cpu := 0; cpu < len(before)*64; cpu++ {
		if before.IsSet(cpu) {
			last = cpu
		}
	}
	p := &threadPlacer{}
	if err := p.Follow(last); err != nil {
		t.Fatalf("Follow(%d): %v", last, err)
	}
	var now unix.CPUSet
	if err := unix.SchedGetaffinity(0, &now); err != nil {
		t.Fatal(err)
	}
	if now.Count() != 1 || !now.IsSet(last) {
		t.Errorf("after Follow(%d) the thread may run on %d CPUs (CPU %d: %v)", last, now.Count(), last, now.IsSet(last))
	}
	if err := p.Follow(len(before)*64 - 1); err == nil && !before.IsSet(len(before)*64-1) {
		t.Errorf("Follow of a CPU the thread may not use: no error")
	}
	if err := p.Release(); err != nil {
		t.Fatal(err)
	}
	if err := unix.SchedGetaffinity(0, &now); err != nil {
		t.Fatal(err)
	}
	if now != before {
		t.Errorf("after Release the thread may run on %d CPUs, before on %d", now.Count(), before.Count())
	}
}
