package guard

import (
	"slices"
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

// A reading whose watch was made in an instance that a reset replaced
// meanwhile: the old instance stays open until the reading is taken in
// (a registrar's inotify_add_watch never meets a closed fd), then is
// closed, and the cgroup is watched again in the new one.
func TestReadingOutlivesItsInstance(t *testing.T) {
	g, k := newFakeGuard(t, DefaultConfig())
	old := &recWatcher{fd: 7}
	g.inotify = old
	_ = g.poller.Add(old.fd)
	open := k.gate("limit:/new")
	defer open()
	k.mkcg("/new", fLimit, 0)
	g.add("/new")
	dir := g.absPath("/new")
	for deadline := time.Now().Add(5 * time.Second); !old.has(dir); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("/new not watched in the old instance")
		}
	}
	fresh := &recWatcher{fd: 8}
	g.installReset(reset{in: fresh})
	g.aside.Wait()
	if old.isClosed() {
		t.Fatal("the old instance was closed under a reading making a watch in it")
	}
	open()
	settleReads(t, g)
	g.aside.Wait()
	if !old.isClosed() || !fresh.has(dir) || fresh.isClosed() {
		t.Fatalf("old closed %v, /new watched in the new instance %v", old.isClosed(), fresh.has(dir))
	}
	if c := g.known["/new"]; c == nil || !c.registering || c.limit != fLimit {
		t.Fatalf("/new: %+v, want registering at its limit", c)
	}
}

// The registrars take a registration before any reading: at the start ten
// thousand readings are queued, and a limited cgroup's registration, queued
// once its reading is taken in, must not wait for all of them.
func TestRegistrationsBeforeReadings(t *testing.T) {
	q := regQueue{more: make(chan struct{}, 1)}
	rd1, rd2 := &reading{}, &reading{}
	r1, r2 := &registration{}, &registration{}
	q.push(work{rd: rd1})
	q.push(work{r: r1})
	q.push(work{rd: rd2})
	q.push(work{r: r2})
	var got []work
	for w, ok := q.pop(); ok; w, ok = q.pop() {
		got = append(got, w)
	}
	if want := []work{{r: r1}, {r: r2}, {rd: rd1}, {rd: rd2}}; !slices.Equal(got, want) {
		t.Fatalf("popped %v, want %v", got, want)
	}
}
