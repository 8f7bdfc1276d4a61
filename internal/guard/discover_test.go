package guard

import (
	"testing"
	"time"
)

// A new cgroup's inotify watch and first reads (its OOM count, its limit)
// are made off the loop: each can wait in the kernel for tens of
// milliseconds under load (measured: 3-38 ms), and a loop that waited
// would serve no crossing meanwhile. Here the fake kernel's call waits
// until the test lets it go: the loop takes the new cgroup in at once,
// serves another cgroup's crossing meanwhile, and guards the new one
// once its reads are done.
func TestNewCgroupReadOffTheLoop(t *testing.T) {
	for _, what := range []string{"watch", "oom", "limit"} {
		t.Run(what+" waits", func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Policy = PolicyProcess
			g, k := newFakeGuard(t, cfg)
			a := k.guardNew(g, "/a", fLimit, fBelow)
			k.proc("/a", bigPid, 60<<10, 0)
			open := k.gate(what + ":/new")
			defer open()
			k.mkcg("/new", fLimit, 0)
			g.queue(change{created, "/new"})
			applied := make(chan struct{})
			go func() { defer close(applied); g.applyChanges() }()
			select {
			case <-applied:
			case <-time.After(2 * time.Second):
				open()
				<-applied
				t.Fatalf("the loop waited for /new's %s", what)
			}
			k.set(func() { k.cgroups["/a"].usage = fAbove })
			g.dispatch(a.thw.Fd(), k.advance(time.Millisecond))
			if !equal(k.killed, []int{bigPid}) {
				t.Fatalf("killed %v while /new was read, want %v", k.killed, []int{bigPid})
			}
			if c := g.known["/new"]; c == nil || c.guarded() || c.registering || !c.reading {
				t.Fatalf("/new while read: %+v, want known, reading, not yet registering", c)
			}
			open()
			settleReads(t, g)
			select {
			case r := <-g.registered:
				g.install(r)
			case <-time.After(5 * time.Second):
				t.Fatal("/new not registered once read")
			}
			if c := g.known["/new"]; c == nil || !c.guarded() || c.limit != fLimit || c.unread {
				t.Fatalf("/new after its reads: %+v, want guarded at its limit", c)
			}
		})
	}
}
