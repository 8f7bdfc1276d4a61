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
