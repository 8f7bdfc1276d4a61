package guard_test

import (
	"flag"
	"k8s.io/klog/v2"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/testenv"
)

// Sustained pressure (issue 12, case 1): a supervisor restarts an
// allocating worker as soon as one dies, for 20 s. Every worker is
// killed by the guard, each kill reported once, naming its own victim:
// "one spike, one kill" must not leave the cgroup unguarded while the
// next worker fills it (the kernel did about half the kills).
func TestRespawningWorkload(t *testing.T) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "pool", 64<<20)
	sink := startGuard(t, cg, testConfig())
	sup := supervisor(t)
	cg.Start(t, rel, sup)
	time.Sleep(20 * time.Second)
	if err := sup.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the supervisor died: %v", err)
	}
	_ = sup.Process.Kill()
	_ = sup.Wait()
	time.Sleep(500 * time.Millisecond) // the last events
	kernel := oomKills(t, cg, rel)
	byGuard := map[int]int{}
	for _, ev := range filter(sink.all(), event.KillProcess) {
		if len(ev.Processes) != 1 {
			t.Errorf("guard event names %d processes: %+v", len(ev.Processes), ev)
			continue
		}
		byGuard[ev.Processes[0].Pid]++
	}
	byKernel := map[int]int{}
	cgroupOOMs := filter(sink.all(), event.CgroupOOM)
	for _, ev := range cgroupOOMs {
		for _, p := range ev.Processes {
			byKernel[p.Pid]++
		}
	}
	t.Logf("20 s of respawning workers: guard kills %d, kernel kills %d (%d CgroupOOM events)", len(byGuard), kernel, len(cgroupOOMs))
	for pid, n := range byGuard {
		switch {
		case n > 1:
			t.Errorf("pid %d reported killed by the guard %d times", pid, n)
		case pid == sup.Process.Pid:
			t.Errorf("the guard killed the supervisor")
		case byKernel[pid] > 0:
			t.Errorf("pid %d reported killed by both the guard and the kernel", pid)
		}
	}
	if uint64(len(cgroupOOMs)) != kernel {
		t.Errorf("%d CgroupOOM events for %d kernel kills", len(cgroupOOMs), kernel)
	}
	if kernel != 0 {
		t.Errorf("the kernel OOM-killed %d times in 20 s of respawning workers (guard %d)", kernel, len(byGuard))
	}
	if len(byGuard) < 20 {
		t.Errorf("only %d workers killed in 20 s", len(byGuard))
	}
}

// supervisor is a prefork server's loop: it forks a worker that allocates
// 1 GiB at once and, as soon as the worker dies, forks the next.
func supervisor(t *testing.T) *exec.Cmd {
	t.Helper()
	perl, err := exec.LookPath("perl")
	if err != nil {
		testenv.Skip(t, "no perl for the supervisor")
	}
	return exec.Command(perl, "-e", `while(1){ my $p=fork; if(!$p){ my $x = "a" x $ARGV[0]; exit } waitpid($p,0) }`, "1073741824")
}

func init() {
	if v := os.Getenv("OOMGUARD_TEST_V"); v != "" {
		fs := flag.NewFlagSet("klog", flag.ContinueOnError)
		klog.InitFlags(fs)
		_ = fs.Set("v", v)
	}
}
