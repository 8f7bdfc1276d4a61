package guard_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/event"
	kernelcaps "github.com/oom-guard/oom-guard/internal/kernel"
	"github.com/oom-guard/oom-guard/internal/testenv"
)

// A hold on the real kernel (hold.go): a guard that cannot run when its
// cgroup reaches the limit (stopped here, as a host that does not run the
// guard's virtual CPU for a while) finds the allocating task waiting, not
// killed, and kills it when it runs again: the kernel kills nobody. A
// guard SIGKILLed while holding leaves the hold and its record; a guard
// started after it with no hold of its own undoes it.
func TestHoldMakesTheKernelWait(t *testing.T) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "held", 64<<20)
	state := filepath.Join(t.TempDir(), "state")
	child := startChildGuard(t, cg.Mem.Path(cg.Rel, ""), state)
	if !kernelcaps.HasOOMWait() {
		// Before 3.12 the wait would be inside the charge, the task's
		// locks held: no hold.
		if oomControl(t, rel)["oom_kill_disable"] != 0 {
			t.Fatal("held on a kernel without the OOM wait of 3.12")
		}
		return
	}
	if oomControl(t, rel)["oom_kill_disable"] != 1 {
		t.Fatal("the guarded cgroup is not held")
	}
	if err := child.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Signal(syscall.SIGCONT) })
	hog := testenv.HogCommand(testenv.HogSpec{})
	cg.Start(t, rel, hog)
	waitFor(t, 10*time.Second, "the hog waiting at the limit", func() bool { return oomControl(t, rel)["under_oom"] == 1 })
	time.Sleep(300 * time.Millisecond)
	if st := threadStates(t, hog.Process.Pid); !strings.Contains(st, "D") {
		t.Errorf("the hog's threads are %q at the limit, want one in D (waiting for memory)", st)
	}
	if n := testenv.KernelOOMKills(t, rel); n != 0 {
		t.Fatalf("the kernel killed %d with the guard held and stopped", n)
	}
	if err := child.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if ws := testenv.WaitExit(t, hog, 10*time.Second); ws.Signal() != syscall.SIGKILL {
		t.Errorf("the hog ended with %v, want the guard's SIGKILL", ws)
	}
	if n := testenv.KernelOOMKills(t, rel); n != 0 {
		t.Errorf("the kernel killed %d", n)
	}

	_ = child.Process.Signal(syscall.SIGKILL)
	_ = child.Wait()
	if oomControl(t, rel)["oom_kill_disable"] != 1 {
		t.Fatal("the dead guard's hold is gone: nothing left to undo")
	}
	cfg := testConfig()
	cfg.HoldOOM, cfg.StateFile = false, state
	_, stop := runGuard(t, cg, cfg)
	if oomControl(t, rel)["oom_kill_disable"] != 0 {
		t.Error("a guard without holds left the dead guard's hold")
	}
	stop()
}

// A held cgroup whose tasks wait at the limit with nothing the guard may
// kill (a pod's pause process, here a hog named so) goes back to the
// kernel's OOM killer: the kernel kills, and the guard reports it. Once
// usage is below the threshold again, the cgroup is held again.
func TestHoldHandedToTheKernel(t *testing.T) {
	// Before 3.12 nothing is held: the kernel kills as it would anyway,
	// and there is nothing to hand over.
	held := kernelcaps.HasOOMWait()
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "pod", 64<<20)
	log := captureLog(t)
	sink := startGuard(t, cg, testConfig())
	if got := oomControl(t, rel)["oom_kill_disable"] == 1; got != held {
		t.Fatalf("oom_kill_disable %v, want %v", got, held)
	}
	hog := testenv.HogCommand(testenv.HogSpec{})
	link := filepath.Join(t.TempDir(), "pause")
	if err := os.Symlink(hog.Path, link); err != nil {
		t.Fatal(err)
	}
	hog.Path, hog.Args[0] = link, link
	cg.Start(t, rel, hog)
	if ws := testenv.WaitExit(t, hog, 10*time.Second); ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the pause hog ended with %v, want the kernel's SIGKILL", ws)
	}
	if n := testenv.KernelOOMKills(t, rel); n != 1 {
		t.Errorf("the kernel killed %d, want 1", n)
	}
	if n, want := sink.holdWaitsSeen(), oneIf(held); n != want {
		t.Errorf("%d hold waits counted, want %d", n, want)
	}
	if n, want := log.lines("handed to the kernel's OOM killer"), oneIf(held); n != want {
		t.Errorf("%d lines handing the cgroup to the kernel, want %d", n, want)
	}
	ev := sink.wait(t, event.CgroupOOM, 5*time.Second)
	if len(ev.Processes) != 1 || ev.Processes[0].Pid != hog.Process.Pid {
		t.Errorf("CgroupOOM event names %+v, want the pause hog %d", ev.Processes, hog.Process.Pid)
	}
	if held {
		waitFor(t, 5*time.Second, "the hold back below the threshold", func() bool { return oomControl(t, rel)["oom_kill_disable"] == 1 })
	}
}

// oomControl is memory.oom_control of v1 cgroup rel.
func oomControl(t *testing.T, rel string) map[string]uint64 {
	t.Helper()
	mem, err := cgroup.Open(testenv.V1MemoryRoot)
	if err != nil {
		t.Fatal(err)
	}
	c, err := mem.(*cgroup.V1).OOMControl(rel)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// threadStates is the state letter of each of pid's threads: the hog is
// a Go program, whose allocating goroutine may run on any of them.
func threadStates(t *testing.T, pid int) string {
	t.Helper()
	stats, err := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "task", "*", "stat"))
	if err != nil || len(stats) == 0 {
		t.Fatalf("threads of %d: %v", pid, err)
	}
	var states strings.Builder
	for _, stat := range stats {
		data, err := os.ReadFile(stat)
		if err != nil {
			continue // a thread that ended
		}
		s := string(data)
		if f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]); len(f) > 0 {
			states.WriteString(f[0])
		}
	}
	return states.String()
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	for end := time.Now().Add(d); !ok(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("no %s after %v", what, d)
		}
	}
}

func oneIf(b bool) int {
	if b {
		return 1
	}
	return 0
}
