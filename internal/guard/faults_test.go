package guard_test

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/testenv"
)

// Short-lived cgroups (jobs, crash-looping pods) vanish while their
// notifications are being registered: the guard stays up, and guards a
// cgroup made right after. It used to panic on the first registration
// that failed half way (a nil eventfd closed).
func TestShortLivedCgroups(t *testing.T) {
	cg := testenv.NewCgroup(t)
	cfg := testConfig()
	g, sink := startGuardHandle(t, cg, cfg)
	const cycles = 3000
	start := time.Now()
	for i := 0; i < cycles; i++ {
		rel := fmt.Sprintf("%s/short-%d", cg.Rel, i)
		if err := cg.Mem.Mkdir(rel); err != nil {
			t.Fatal(err)
		}
		if err := cg.Mem.WriteFile(rel, "memory.limit_in_bytes", fmt.Sprint(64<<20)); err != nil {
			t.Fatal(err)
		}
		if err := cg.Mem.Rmdir(rel); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d cgroups made, limited and removed in %v", cycles, time.Since(start).Round(time.Millisecond))
	time.Sleep(200 * time.Millisecond) // the registrations under way end
	if err := g.Healthy(); err != nil {
		t.Fatal(err)
	}
	sink.waitGuardedN(t, 0)
	// Guarded is what this test asks; a race lost to the kernel on a
	// loaded machine (about 1 in 100, TestGuardPreemptsKernel) is run
	// again in a new cgroup, up to three times.
	for race := 1; ; race++ {
		name := fmt.Sprintf("after-%d", race)
		rel := cg.Child(t, name, 64<<20)
		sink.waitGuardedN(t, race)
		hog := testenv.HogCommand(testenv.HogSpec{MiB: 0})
		cg.Start(t, rel, hog)
		testenv.WaitExit(t, hog, 10*time.Second)
		if n := oomKills(t, cg, rel); n != 0 && race < 3 {
			t.Logf("race %d: the kernel OOM-killed %d processes; again", race, n)
			continue
		}
		ev := sink.wait(t, event.KillProcess, 10*time.Second)
		for ev.OOMCgroup != cg.Path(name) {
			ev = sink.wait(t, event.KillProcess, 10*time.Second)
		}
		return
	}
}

// withNofile runs f with this process's soft RLIMIT_NOFILE lowered to the
// number of fds open now plus spare, so that the guard (in this process)
// runs out of fds, and restores it after.
func withNofile(t *testing.T, spare uint64, f func()) {
	t.Helper()
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	// The fds are numbered densely from 0: the highest decides what fits.
	lim := unix.Rlimit{Cur: uint64(len(fds)) + spare, Max: old.Max}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
			t.Errorf("restore RLIMIT_NOFILE: %v", err)
		}
	}()
	f()
}

// Out of file descriptors, an inotify reset keeps the watches it has (it
// used to drop them first and then dereference the nil instance), the loop
// does not spin, new cgroups are still found and, once fds are there
// again, guarded.
func TestOutOfFdsKeepsGuarding(t *testing.T) {
	cg := testenv.NewCgroup(t)
	cfg := testConfig()
	cfg.InotifyReset = 20 * time.Millisecond
	cfg.WalkInterval = 50 * time.Millisecond
	g, sink := startGuardHandle(t, cg, cfg)
	// The cgroup is made by a shell started beforehand: this process has
	// no fd to spare for it.
	rel := cg.Rel + "/starved"
	maker := exec.Command("sh", "-c", `read go && mkdir "$1" && echo 67108864 > "$1/memory.limit_in_bytes" && echo made`, "sh", cg.Path("starved"))
	stdin, err := maker.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := maker.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := maker.Start(); err != nil {
		t.Fatal(err)
	}
	defer maker.Wait()
	var cpu time.Duration
	withNofile(t, 0, func() {
		before := threadCPU(t)
		if _, err := stdin.Write([]byte("go\n")); err != nil {
			t.Fatal(err)
		}
		var made [5]byte
		if _, err := io.ReadFull(stdout, made[:]); err != nil || string(made[:]) != "made\n" {
			t.Fatalf("make the cgroup: %q, %v", made, err)
		}
		time.Sleep(500 * time.Millisecond) // 25 refused resets, 10 walks
		cpu = threadCPU(t) - before
		if err := g.Healthy(); err != nil {
			t.Fatal(err)
		}
	})
	// A spinning real-time loop would have taken the whole 500 ms.
	if cpu > 150*time.Millisecond {
		t.Errorf("the process used %v of CPU in 500 ms without fds: the loop spins", cpu)
	}
	sink.waitGuardedN(t, 1) // the failed registration retried
	hog := testenv.HogCommand(testenv.HogSpec{MiB: 0})
	cg.Start(t, rel, hog)
	ev := sink.wait(t, event.KillProcess, 10*time.Second)
	testenv.WaitExit(t, hog, 5*time.Second)
	if ev.OOMCgroup != cg.Path("starved") {
		t.Fatalf("event %+v", ev)
	}
}

// threadCPU is the CPU time this process has used.
func threadCPU(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Run returns only once every goroutine it started has ended: a walker or
// reclaimer still running after the poller is closed could write to its
// wake-up fd's number, by then perhaps another file.
func TestStopWaitsForItsGoroutines(t *testing.T) {
	cg := testenv.NewCgroup(t)
	cg.Child(t, "a", 64<<20)
	for i := 0; i < 100; i++ {
		cg.Child(t, fmt.Sprint("unlimited-", i), 0)
	}
	// A walker that walks all the time is in the middle of a walk when
	// the guard stops.
	cfg := testConfig()
	cfg.WalkInterval = time.Millisecond
	for i := 0; i < 5; i++ {
		_, stop := runGuard(t, cg, cfg)
		time.Sleep(20 * time.Millisecond)
		stop()
		if left := guardGoroutines(); left != "" {
			t.Fatalf("after Run returned, still running:\n%s", left)
		}
	}
}

// guardGoroutines lists the goroutines running code of package guard.
func guardGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var left []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "internal/guard.(*Guard)") && !strings.Contains(g, "guard_test.") {
			left = append(left, g)
		}
	}
	return strings.Join(left, "\n\n")
}
