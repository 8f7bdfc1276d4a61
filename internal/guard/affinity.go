package guard

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Where the loop sleeps. The crossing's notification is sent by the
// allocating process itself, in its page fault (the kernel checks the
// thresholds as it charges a page), and the wake-up of the loop's
// real-time thread preempts it on the spot only if both are on the same
// CPU. On another CPU the wake-up is an inter-processor interrupt, and
// that CPU, idle, may be halted: in a virtual machine the host must first
// run its virtual CPU again, which on a busy host takes milliseconds, while
// the allocator goes on filling the margin on its own CPU. Traced with
// ftrace (bench/preempt's respawning workload, a 2-CPU KVM guest): the
// loop ran 36 us (p50) and at most 0.34 ms after a wake-up from its own
// CPU, 93 us (p50), 3.4 ms (p99) and up to 8.8 ms after one from the
// other, and every race lost to the kernel was of the second kind.
//
// So while exactly one cgroup is near its limit (its files open, files.go)
// and has a kill prepared (prepare.go), the loop sleeps on the CPU its
// victim last ran on; otherwise anywhere it may. A victim that moves
// meanwhile leaves the loop no worse off than before. With many cgroups
// near their limits at once (a storm) no one CPU serves them all, and
// moving the loop at each turn would only add migrations.
// Only a victim with one thread is followed: the kernel tells the CPU of
// a process's first thread, and in a Go or Java process the thread that
// allocates is seldom that one. A real-time victim is not followed
// either: the loop's wake-up would not preempt it, and a CPU busy with
// real-time work could hold the loop off for as long as it lasts, where
// unpinned it would be woken on another.
// Nor is a preparation past PrepareMaxAge: the loop is pinned only for as
// long as the victim is the one it would kill.

// LoopPlacer keeps the loop's thread on one CPU, or lets it go.
type LoopPlacer interface {
	// Follow keeps the calling thread on cpu.
	Follow(cpu int) error
	// Release lets it run wherever it could before the first Follow.
	Release() error
}

// placeLoop puts the loop where its next crossing is most likely to wake
// it from (see above). It runs at the end of each turn, never between a
// crossing and its kill: a move is a system call, and a migration.
func (g *Guard) placeLoop() {
	if g.placer == nil {
		return
	}
	want := g.loopCPUWanted(g.clock.Now())
	if want == g.placedOn {
		return
	}
	var err error
	if want < 0 {
		err = g.placer.Release()
	} else {
		err = g.placer.Follow(want)
	}
	if err != nil {
		// Refused (a CPU outside the guard's cpuset, say): the loop
		// stays where it is; said once.
		if !g.placeFailed {
			klog.V(2).Infof("guard loop: %v (it sleeps wherever the scheduler puts it)", err)
			g.placeFailed = true
		}
		if want < 0 {
			g.placedOn = -1 // nothing more to try: no timer for it
		}
		return
	}
	g.placedOn = want
}

// loopCPUWanted is the CPU of the one victim prepared, -1 for anywhere.
func (g *Guard) loopCPUWanted(now time.Time) int {
	if len(g.preps) != 1 || g.withFiles > 1 {
		return -1
	}
	for c := range g.preps {
		if now.Sub(c.prep.at) > g.cfg.PrepareMaxAge {
			return -1
		}
		if v := c.prep.target.Inspected(); v.Threads == 1 && !v.RealTime() {
			return v.CPU
		}
	}
	return -1
}

// placedUntil is when the loop, pinned, is to let go of its CPU (the
// preparation's age limit), so that a timer wakes it then; zero if it is
// not pinned.
func (g *Guard) placedUntil() time.Time {
	if g.placedOn < 0 {
		return time.Time{}
	}
	for c := range g.preps {
		return c.prep.at.Add(g.cfg.PrepareMaxAge + time.Millisecond)
	}
	return time.Time{}
}

// unplaceLoop lets the loop's thread run on every CPU it could again.
func (g *Guard) unplaceLoop() {
	if g.placer != nil && g.placedOn >= 0 {
		if err := g.placer.Release(); err != nil {
			klog.Errorf("guard loop: %v", err)
		}
		g.placedOn = -1
	}
}

// threadPlacer is LoopPlacer for the calling OS thread (the loop's,
// locked to it), by sched_setaffinity(2), which every kernel has.
type threadPlacer struct {
	start unix.CPUSet
	saved bool
}

func (p *threadPlacer) Follow(cpu int) error {
	if !p.saved {
		if err := unix.SchedGetaffinity(0, &p.start); err != nil {
			return fmt.Errorf("read the loop thread's CPUs: %w", err)
		}
		p.saved = true
	}
	if cpu >= len(p.start)*64 || !p.start.IsSet(cpu) {
		return fmt.Errorf("CPU %d is not one the loop may run on", cpu)
	}
	var one unix.CPUSet
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		return fmt.Errorf("keep the loop thread on CPU %d: %w", cpu, err)
	}
	return nil
}

func (p *threadPlacer) Release() error {
	if !p.saved {
		return nil
	}
	if err := unix.SchedSetaffinity(0, &p.start); err != nil {
		return fmt.Errorf("let the loop thread run on its CPUs again: %w", err)
	}
	return nil
}
