package notify_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/notify"
	"github.com/oom-guard/oom-guard/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.RunHogIfRequested()
	os.Exit(m.Run())
}

func newPoller(t *testing.T) *notify.Poller {
	t.Helper()
	p, err := notify.NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// waitFor waits until fd is ready, failing after d.
func waitFor(t *testing.T, p *notify.Poller, fd int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		ready, _, err := p.Wait(time.Until(deadline))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range ready {
			if r == fd {
				return
			}
		}
	}
	t.Fatalf("fd %d not ready within %v", fd, d)
}

func TestPollerWake(t *testing.T) {
	p := newPoller(t)
	go func() { time.Sleep(20 * time.Millisecond); p.Wake() }()
	start := time.Now()
	_, woken, err := p.Wait(5 * time.Second)
	if err != nil || !woken {
		t.Fatalf("woken=%v err=%v", woken, err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatal("Wake did not end Wait")
	}
	if _, woken, _ := p.Wait(10 * time.Millisecond); woken {
		t.Fatal("wake-up not consumed")
	}
}

// The threshold eventfd fires when a real process's usage crosses it, and
// the OOM eventfd fires when the same cgroup then hits its limit.
func TestV1ThresholdAndOOMFire(t *testing.T) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "c", 32<<20)
	p := newPoller(t)
	th, err := notify.V1Threshold(cg.Mem, rel, 16<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer th.Close()
	oom, err := notify.V1OOM(cg.Mem, rel)
	if err != nil {
		t.Fatal(err)
	}
	defer oom.Close()
	for _, w := range []notify.Watch{th, oom} {
		if err := p.Add(w.Fd()); err != nil {
			t.Fatal(err)
		}
	}
	if ready, _, _ := p.Wait(50 * time.Millisecond); len(ready) != 0 {
		t.Fatalf("ready before any allocation: %v", ready)
	}
	cg.Start(t, rel, testenv.HogCommand(testenv.HogSpec{MiB: 20, Hold: true}))
	waitFor(t, p, th.Fd(), 10*time.Second)
	if err := th.Drain(); err != nil {
		t.Fatal(err)
	}
	cg.Start(t, rel, testenv.HogCommand(testenv.HogSpec{MiB: 64}))
	waitFor(t, p, oom.Fd(), 10*time.Second)
}

// Two thresholds registered on one eventfd both signal it: each crossing
// by a real process wakes the same fd (the guard tells them apart by the
// usage it reads), and none wakes it before.
func TestV1ThresholdsShareOneEventfd(t *testing.T) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "c", 128<<20)
	p := newPoller(t)
	both, err := notify.V1Thresholds(cg.Mem, rel, 16<<20, 48<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer both.Close()
	if err := p.Add(both.Fd()); err != nil {
		t.Fatal(err)
	}
	if ready, _, _ := p.Wait(50 * time.Millisecond); len(ready) != 0 {
		t.Fatalf("ready before any allocation: %v", ready)
	}
	for i, crossing := range []uint64{16 << 20, 48 << 20} {
		cg.Start(t, rel, testenv.HogCommand(testenv.HogSpec{MiB: 24, Hold: true}))
		waitFor(t, p, both.Fd(), 10*time.Second)
		usage, err := cg.Mem.ReadUint(rel, "memory.usage_in_bytes")
		if err != nil {
			t.Fatal(err)
		}
		if usage < crossing {
			t.Fatalf("crossing %d: woken at usage %d MiB, below %d MiB", i+1, usage>>20, crossing>>20)
		}
		if err := both.Drain(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // the hog's last pages
		_ = both.Drain()
	}
	if ready, _, _ := p.Wait(50 * time.Millisecond); len(ready) != 0 {
		t.Fatalf("ready with no threshold crossed since: %v", ready)
	}
}

// Removing a cgroup signals its eventfds, so the guard learns of it even
// without inotify.
func TestV1EventfdFiresOnRemoval(t *testing.T) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "gone", 32<<20)
	p := newPoller(t)
	th, err := notify.V1Threshold(cg.Mem, rel, 16<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer th.Close()
	if err := p.Add(th.Fd()); err != nil {
		t.Fatal(err)
	}
	if err := cg.Mem.Rmdir(rel); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(testenv.V1FreezerRoot, rel))
	waitFor(t, p, th.Fd(), 5*time.Second)
}

// inotify on a cgroup directory reports a new sub-cgroup and a write to the
// limit file: that is how a new container is guarded within milliseconds.
func TestInotifySeesCgroupsAndLimitWrites(t *testing.T) {
	cg := testenv.NewCgroup(t)
	in, err := notify.NewInotify()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	p := newPoller(t)
	if err := p.Add(in.Fd()); err != nil {
		t.Fatal(err)
	}
	top := cg.Mem.Path(cg.Rel, "")
	if err := in.Add(top); err != nil {
		t.Fatal(err)
	}
	rel := cg.Child(t, "new", 0)
	got := collect(t, p, in, func(c notify.DirChange) bool { return c.Created() && c.IsDir() && c.Name == "new" })
	if got.Dir != top {
		t.Fatalf("change in %s, want %s", got.Dir, top)
	}
	if err := in.Add(cg.Mem.Path(rel, "")); err != nil {
		t.Fatal(err)
	}
	cg.SetLimit(t, rel, 48<<20)
	collect(t, p, in, func(c notify.DirChange) bool { return c.Modified() && c.Name == "memory.limit_in_bytes" })
	if err := cg.Mem.Rmdir(rel); err != nil {
		t.Fatal(err)
	}
	collect(t, p, in, func(c notify.DirChange) bool { return c.Removed() && c.Name == "new" && c.Dir == top })
}

func collect(t *testing.T, p *notify.Poller, in *notify.Inotify, want func(notify.DirChange) bool) notify.DirChange {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, _, err := p.Wait(time.Until(deadline)); err != nil {
			t.Fatal(err)
		}
		changes, overflow, err := in.Read()
		if err != nil || overflow {
			t.Fatalf("read: %v overflow=%v", err, overflow)
		}
		for _, c := range changes {
			if want(c) {
				return c
			}
		}
	}
	t.Fatal("expected inotify change not seen")
	return notify.DirChange{}
}

// The lag the guard's v1 margins allow for: 128 pages between the
// kernel's threshold checks on a CPU, plus a CPU's charge cache.
func TestV1ThresholdLag(t *testing.T) {
	page := uint64(os.Getpagesize())
	for _, tc := range []struct {
		n    notify.V1Notifier
		want uint64
	}{
		{notify.V1Notifier{}, 2 * 192 * page},
		{notify.V1Notifier{ChargingCPUs: 1}, 192 * page},
		{notify.V1Notifier{ChargingCPUs: 8}, 8 * 192 * page},
	} {
		if got := tc.n.ThresholdLag(); got != tc.want {
			t.Errorf("%d CPUs: lag %d, want %d", tc.n.ChargingCPUs, got, tc.want)
		}
	}
}

// A watch made off the owner's goroutine (Watch) and adopted later loses
// none of its events: those that came between the two are held and handed
// over by Adopt.
func TestInotifyHoldsEventsUntilAdopted(t *testing.T) {
	cg := testenv.NewCgroup(t)
	in, err := notify.NewInotify()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	rel := cg.Child(t, "pod", 0)
	dir := cg.Mem.Path(rel, "")
	wd, err := in.Watch(dir)
	if err != nil {
		t.Fatal(err)
	}
	child := cg.Child(t, "pod/c1", 0)
	cg.SetLimit(t, rel, 48<<20)
	time.Sleep(10 * time.Millisecond)
	changes, overflow, err := in.Read()
	if err != nil || overflow || len(changes) != 0 {
		t.Fatalf("before Adopt: changes %v, overflow %v, err %v; want none held back", changes, overflow, err)
	}
	held := in.Adopt(dir, wd)
	var created, written bool
	for _, c := range held {
		if c.Dir != dir {
			t.Errorf("held change in %s, want %s", c.Dir, dir)
		}
		created = created || c.Created() && c.IsDir() && c.Name == "c1"
		written = written || c.Modified() && c.Name == "memory.limit_in_bytes"
	}
	if !created || !written {
		t.Fatalf("Adopt handed over %v: want c1's creation and the limit's write", held)
	}
	// Adopted: the next events come by Read.
	if err := cg.Mem.Rmdir(child); err != nil {
		t.Fatal(err)
	}
	p := newPoller(t)
	if err := p.Add(in.Fd()); err != nil {
		t.Fatal(err)
	}
	collect(t, p, in, func(c notify.DirChange) bool { return c.Removed() && c.Name == "c1" && c.Dir == dir })
}
