package notify_test

// The V2Notifier against a real cgroup v2 kernel, in the VM
// (internal/testenv/vm): TestNotifyV2InVM boots it and reports each TestV2*
// test as its subtest; on the host they skip.

import (
	"syscall"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/notify"
	"github.com/oom-guard/oom-guard/internal/testenv"
	"github.com/oom-guard/oom-guard/internal/testenv/vm"
)

func TestNotifyV2InVM(t *testing.T) {
	vm.Run(t, ".", vm.Options{Run: "^TestV2"})
}

// The kernel's OOM notification for v2 is the cgroup's own "oom" count:
// it fires when the cgroup's limit is hit, not when a child's is, and a
// removed cgroup fires its watches so the loop finds out.
func TestV2NotifierOOMWatchIsLocal(t *testing.T) {
	vm.GuestOnly(t)
	cg := testenv.NewV2Cgroup(t)
	parent := cg.Child(t, "p", 0)
	cg.Delegate(t, parent)
	child := cg.Child(t, "p/c", 32<<20)
	n, err := notify.NewV2Notifier(cg.FS, notify.DefaultV2Options())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	p := newPollerV2(t, n)
	parentOOM := mustWatch(t)(n.OOM(parent))
	childOOM := mustWatch(t)(n.OOM(child))
	childTh := mustWatch(t)(n.Threshold(child, 16<<20))
	for _, w := range []notify.Watch{parentOOM, childOOM, childTh} {
		defer w.Close()
		if err := p.Add(w.Fd()); err != nil {
			t.Fatal(err)
		}
	}
	hog := testenv.HogCommand(testenv.HogSpec{MiB: 0})
	cg.Start(t, child, hog)
	fired := map[int]bool{}
	for !fired[childOOM.Fd()] {
		for _, fd := range waitReady(t, p, n, 30*time.Second) {
			fired[fd] = true
		}
	}
	if !fired[childTh.Fd()] {
		t.Error("the threshold watch did not fire before the OOM")
	}
	_ = hog.Wait()
	drainReady(p, n, fired)
	if fired[parentOOM.Fd()] {
		t.Error("the parent's OOM watch fired for its child's OOM")
	}
	if err := cg.FS.Rmdir(child); err != nil {
		t.Fatal(err)
	}
	gone := map[int]bool{}
	for !gone[childTh.Fd()] || !gone[childOOM.Fd()] {
		for _, fd := range waitReady(t, p, n, 10*time.Second) {
			gone[fd] = true
		}
	}
}

// The kernel's kill in a cgroup fires its OOM watch too, when the limit
// hit was an ancestor's (a pod's): on the v2 node the kill came up to
// 96 ms after the pod's "oom", later than the guard counts after it, so
// the container's own oom_kill moving is what tells the guard of it.
func TestV2NotifierOOMWatchFiresOnAKill(t *testing.T) {
	vm.GuestOnly(t)
	cg := testenv.NewV2Cgroup(t)
	pod := cg.Child(t, "pod", 32<<20)
	cg.Delegate(t, pod)
	ctr := cg.Child(t, "pod/ctr", 0)
	n, err := notify.NewV2Notifier(cg.FS, notify.DefaultV2Options())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	p := newPollerV2(t, n)
	podOOM := mustWatch(t)(n.OOM(pod))
	ctrOOM := mustWatch(t)(n.OOM(ctr))
	for _, w := range []notify.Watch{podOOM, ctrOOM} {
		defer w.Close()
		if err := p.Add(w.Fd()); err != nil {
			t.Fatal(err)
		}
	}
	hog := testenv.HogCommand(testenv.HogSpec{MiB: 0})
	cg.Start(t, ctr, hog)
	fired := map[int]bool{}
	for !fired[ctrOOM.Fd()] {
		for _, fd := range waitReady(t, p, n, 30*time.Second) {
			fired[fd] = true
		}
	}
	_ = hog.Wait()
	drainReady(p, n, fired)
	if !fired[podOOM.Fd()] {
		t.Error("the pod's OOM watch did not fire for its own limit")
	}
}

func mustWatch(t *testing.T) func(notify.Watch, error) notify.Watch {
	return func(w notify.Watch, err error) notify.Watch {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
}

func newPollerV2(t *testing.T, n *notify.V2Notifier) *notify.Poller {
	t.Helper()
	p, err := notify.NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if err := p.Add(n.Sampler().Fd()); err != nil {
		t.Fatal(err)
	}
	return p
}

// waitReady serves the sampler as the guard's loop does until a watch
// fires (handed back by Sample, or readable), and returns those.
func waitReady(t *testing.T, p *notify.Poller, n *notify.V2Notifier, d time.Duration) []int {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		ready, _, err := p.Wait(time.Until(deadline))
		if err != nil {
			t.Fatal(err)
		}
		var watches []int
		for _, fd := range ready {
			if fd == n.Sampler().Fd() {
				watches = append(watches, n.Sampler().Sample()...)
				continue
			}
			var buf [8]byte
			_, _ = syscall.Read(fd, buf[:])
			watches = append(watches, fd)
		}
		if len(watches) > 0 {
			return watches
		}
	}
	t.Fatalf("no watch readable within %v", d)
	return nil
}

// drainReady adds whatever becomes readable within a short while.
func drainReady(p *notify.Poller, n *notify.V2Notifier, fired map[int]bool) {
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		ready, _, err := p.Wait(time.Until(deadline))
		if err != nil {
			return
		}
		for _, fd := range ready {
			if fd == n.Sampler().Fd() {
				for _, w := range n.Sampler().Sample() {
					fired[w] = true
				}
				continue
			}
			var buf [8]byte
			_, _ = syscall.Read(fd, buf[:])
			fired[fd] = true
		}
	}
}
