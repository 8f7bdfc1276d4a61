package guard_test

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/testenv"
)

// cgroupFiles lists the files this process holds open in cgroup dir.
func cgroupFiles(t *testing.T, dir string) []string {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var open []string
	for _, fd := range fds {
		if target, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && strings.HasPrefix(target, dir+"/") {
			open = append(open, strings.TrimPrefix(target, dir+"/"))
		}
	}
	return open
}

// waitFiles waits until this process holds want files open in dir.
func waitFiles(t *testing.T, dir string, want int, why string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		open := cgroupFiles(t, dir)
		if len(open) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: files open in %s: %v, want %d", why, dir, open, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A guarded cgroup at rest costs the guard no open file of its own (an
// open cgroup file is an fd and about 5 KiB of kernel memory): its usage,
// limit and memory.stat are open only while it is above its early
// threshold, and closed when it is below it again.
func TestFilesOpenOnlyNearTheLimit(t *testing.T) {
	cg := testenv.NewCgroup(t)
	cfg := testConfig()
	const limit = 128 << 20
	// The early threshold far below the threshold, so that a process can
	// sit between them: 125.4 MiB and 93.4 MiB.
	cfg.ReclaimableRatio, cfg.PrepareAhead = 0, 32<<20
	early, threshold := onV1(cfg).EarlyThreshold(limit), onV1(cfg).Threshold(limit)
	near := cg.Child(t, "near", limit)
	cg.Child(t, "rest", limit)
	startGuard(t, cg, cfg)
	for _, name := range []string{"near", "rest"} {
		waitFiles(t, cg.Path(name), 0, "guarded, at rest")
	}

	hog := testenv.HogCommand(testenv.HogSpec{MiB: 100, Hold: true})
	cg.Start(t, near, hog)
	waitFiles(t, cg.Path("near"), 3, "above the early threshold")
	usage, err := cg.Mem.ReadUint(near, "memory.usage_in_bytes")
	if err != nil {
		t.Fatal(err)
	}
	if usage < early || usage >= threshold {
		t.Fatalf("usage %d MiB, want it between the early threshold %d MiB and the threshold %d MiB", usage>>20, early>>20, threshold>>20)
	}
	if open := cgroupFiles(t, cg.Path("rest")); len(open) != 0 {
		t.Fatalf("files open in the cgroup at rest: %v", open)
	}

	if err := hog.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	testenv.WaitExit(t, hog, 5*time.Second)
	waitFiles(t, cg.Path("near"), 0, "below the early threshold again")
}

// Registering a cgroup's thresholds waits for the kernel (a
// synchronize_rcu() each): a start over many cgroups queues them for a
// few registrars, not a goroutine each, whose stacks would be charged to
// the guard meanwhile (a burst of 1,000 new cgroups OOM-killed a guard
// over 5,000 in its 60 MiB limit).
func TestRegistrationsQueueForAFewRegistrars(t *testing.T) {
	cg := testenv.NewCgroup(t)
	const n = 300
	for i := 0; i < n; i++ {
		cg.Child(t, "c"+strconv.Itoa(i), 64<<20)
	}
	g, sink := newGuard(t, cg, testConfig())
	before := runtime.NumGoroutine()
	t.Cleanup(runInBackground(t, g, 10*time.Second, nil))
	most := 0
	for ready := false; !ready; {
		select {
		case <-g.Ready():
			ready = true
		case <-time.After(time.Millisecond):
		}
		most = max(most, runtime.NumGoroutine()-before)
	}
	sink.waitGuardedN(t, n)
	if most >= n/2 {
		t.Fatalf("%d goroutines more while %d cgroups were registered: one a cgroup, not a few registrars", most, n)
	}
	t.Logf("at most %d goroutines more while %d cgroups were registered", most, n)
}

// A guarded cgroup at rest holds two eventfds: one for both of its
// thresholds (v1 lets several events share one) and one for its OOM
// notification.
func TestTwoEventfdsAGuardedCgroup(t *testing.T) {
	cg := testenv.NewCgroup(t)
	const n = 20
	for i := 0; i < n; i++ {
		cg.Child(t, "c"+strconv.Itoa(i), 64<<20)
	}
	before := openFds(t)["anon_inode:[eventfd]"]
	_, sink := startGuardHandle(t, cg, testConfig())
	sink.waitGuardedN(t, n)
	// The loop's own (its poller's wake-up) besides.
	if got := openFds(t)["anon_inode:[eventfd]"] - before; got < 2*n || got > 2*n+2 {
		t.Fatalf("%d eventfds more with %d cgroups guarded, want 2 each", got, n)
	}
}
