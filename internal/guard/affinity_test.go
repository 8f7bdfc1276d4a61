package guard

import (
	"errors"
	"testing"
	"time"
)

// The loop sleeps on the CPU of the one victim prepared, and anywhere
// when none is, or more than one (affinity.go).
func TestLoopFollowsTheOnePreparedVictim(t *testing.T) {
	for _, tc := range []struct {
		name      string
		followErr error
		// run drives the loop; want is where it sleeps after each step.
		run  func(g *Guard, k *fakeKernel, a, b *cg) []int
		want []int
	}{
		{name: "one victim prepared, then killed at the crossing",
			run: func(g *Guard, k *fakeKernel, a, b *cg) []int {
				prepareAt(g, k, a, 95*mib)
				first := turnEnd(g, k)
				k.set(func() { k.cgroups[a.rel].usage = fAbove })
				g.dispatch(a.thw.Fd(), k.advance(time.Millisecond))
				return []int{first, turnEnd(g, k)}
			},
			want: []int{3, -1}},
		{name: "one victim prepared, then usage falls back",
			run: func(g *Guard, k *fakeKernel, a, b *cg) []int {
				prepareAt(g, k, a, 95*mib)
				first := turnEnd(g, k)
				prepareAt(g, k, a, fBelow)
				return []int{first, turnEnd(g, k)}
			},
			want: []int{3, -1}},
		{name: "two cgroups prepared: anywhere",
			run: func(g *Guard, k *fakeKernel, a, b *cg) []int {
				prepareAt(g, k, a, 95*mib)
				first := turnEnd(g, k)
				prepareAt(g, k, b, 95*mib)
				return []int{first, turnEnd(g, k)}
			},
			want: []int{3, -1}},
		{name: "another cgroup near its limit, nothing to prepare in it: anywhere",
			run: func(g *Guard, k *fakeKernel, a, b *cg) []int {
				k.set(func() { delete(k.procs, 200) })
				prepareAt(g, k, a, 95*mib)
				first := turnEnd(g, k)
				prepareAt(g, k, b, 95*mib)
				if b.prep != nil || len(g.preps) != 1 {
					t.Fatalf("/b prepared %+v with no process in it", b.prep)
				}
				return []int{first, turnEnd(g, k)}
			},
			want: []int{3, -1}},
		{name: "a preparation past its age: anywhere, a timer wakes the loop for it",
			run: func(g *Guard, k *fakeKernel, a, b *cg) []int {
				prepareAt(g, k, a, 95*mib)
				first := turnEnd(g, k)
				if d := g.nextTimeout(k.Now()); d > g.cfg.PrepareMaxAge+time.Millisecond {
					t.Errorf("pinned, the loop sleeps %v, past the preparation's age %v", d, g.cfg.PrepareMaxAge)
				}
				k.advance(g.cfg.PrepareMaxAge + 2*time.Millisecond)
				return []int{first, turnEnd(g, k)}
			},
			want: []int{3, -1}},
		{name: "a victim with more than one thread is not followed",
			run: func(g *Guard, k *fakeKernel, a, b *cg) []int {
				k.set(func() { k.procs[100].Threads = 12 })
				prepareAt(g, k, a, 95*mib)
				return []int{turnEnd(g, k)}
			},
			want: []int{-1}},
		{name: "a real-time victim is not followed",
			run: func(g *Guard, k *fakeKernel, a, b *cg) []int {
				k.set(func() { k.procs[100].Policy = 1 }) // SCHED_FIFO
				prepareAt(g, k, a, 95*mib)
				return []int{turnEnd(g, k)}
			},
			want: []int{-1}},
		{name: "a refused move leaves the loop where it is, and the kill is made",
			followErr: errors.New("CPU 3 is not one the loop may run on"),
			run: func(g *Guard, k *fakeKernel, a, b *cg) []int {
				prepareAt(g, k, a, 95*mib)
				first := turnEnd(g, k)
				k.set(func() { k.cgroups[a.rel].usage = fAbove })
				g.dispatch(a.thw.Fd(), k.advance(time.Millisecond))
				if len(k.killed) != 1 {
					t.Errorf("killed %v, want the prepared victim", k.killed)
				}
				return []int{first, turnEnd(g, k)}
			},
			want: []int{-1, -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Policy = PolicyProcess
			g, k := newFakeGuard(t, cfg)
			k.followErr = tc.followErr
			a := k.guardNew(g, "/a", fLimit, fBelow)
			b := k.guardNew(g, "/b", fLimit, fBelow)
			k.proc("/a", 100, 60<<10, 0)
			k.proc("/b", 200, 60<<10, 0)
			k.set(func() {
				k.procs[100].CPU, k.procs[200].CPU = 3, 1
				k.procs[100].Threads, k.procs[200].Threads = 1, 1
			})
			if got := tc.run(g, k, a, b); !equal(got, tc.want) {
				t.Errorf("the loop slept on CPUs %v, want %v", got, tc.want)
			}
		})
	}
}

// prepareAt has cgroup c's usage cross its early threshold to usage.
func prepareAt(g *Guard, k *fakeKernel, c *cg, usage uint64) {
	k.set(func() { k.cgroups[c.rel].usage = usage })
	g.dispatch(c.earlyw.Fd(), k.advance(time.Millisecond))
}

// turnEnd ends the loop's turn and tells where it sleeps.
func turnEnd(g *Guard, k *fakeKernel) int {
	g.placeLoop()
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.loopCPU
}
