package guard_test

import (
	"flag"
	"fmt"
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
	// Each worker is a new race, which a loaded machine (other tests, a VM
	// beside this one) loses now and then: bench/preempt measures the rate
	// (about 1 in 100 here). What this test must see gone is the kernel's
	// share while the cgroup was left unguarded after each kill: a third
	// to a half of the kills before.
	if kernel*10 > uint64(len(byGuard))+kernel {
		t.Errorf("the kernel OOM-killed %d times in 20 s of respawning workers, the guard %d: more than lost races", kernel, len(byGuard))
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

// startGated starts cmd in cgroup rel held at its gate (see
// testenv.StartIn); writing a byte to the returned pipe lets it run.
func startGated(t *testing.T, cg *testenv.Cgroup, rel string, cmd *exec.Cmd) *os.File {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd.ExtraFiles = append(cmd.ExtraFiles, r)
	if err := cmd.Start(); err != nil {
		w.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); w.Close() })
	if err := cg.Mem.AddProc(rel, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	return w
}

// A storm (issue 12, case 2): 100 cgroups of 64 MiB, one process growing
// in each, all released at the same moment. The guard kills each once;
// the kernel none (it killed 35 of them, most already signalled by the
// guard, which then signalled some a second time).
func TestStormOfCrossings(t *testing.T) {
	const n = 100
	cg := testenv.NewCgroup(t)
	var rels []string
	for i := 0; i < n; i++ {
		rels = append(rels, cg.Child(t, fmt.Sprintf("s%03d", i), 64<<20))
	}
	sink := startGuard(t, cg, testConfig())
	sink.waitGuardedN(t, n)
	hogs := make([]*exec.Cmd, n)
	gates := make([]*os.File, n)
	for i, rel := range rels {
		hogs[i] = testenv.HogCommand(testenv.HogSpec{MiB: 0})
		gates[i] = startGated(t, cg, rel, hogs[i])
	}
	start := time.Now()
	for _, w := range gates {
		_, _ = w.Write([]byte{1})
	}
	pidOf := map[int]int{}
	for i, h := range hogs {
		pidOf[h.Process.Pid] = i
	}
	for _, h := range hogs {
		if ws := testenv.WaitExit(t, h, 60*time.Second); ws.Signal() != syscall.SIGKILL {
			t.Errorf("pid %d ended with %v", h.Process.Pid, ws)
		}
	}
	all := time.Since(start)
	time.Sleep(500 * time.Millisecond) // the last events
	kernel := uint64(0)
	for _, rel := range rels {
		kernel += oomKills(t, cg, rel)
	}
	killed := map[int]int{}
	for _, ev := range filter(sink.all(), event.KillProcess) {
		for _, p := range ev.Processes {
			killed[p.Pid]++
			if i, ok := pidOf[p.Pid]; !ok || ev.OOMCgroup != cg.Path(fmt.Sprintf("s%03d", i)) {
				t.Errorf("guard event %s names pid %d", ev.OOMCgroup, p.Pid)
			}
		}
	}
	twice := 0
	for pid, k := range killed {
		if k > 1 {
			twice++
			t.Errorf("pid %d killed %d times", pid, k)
		}
	}
	t.Logf("%d cgroups crossing at once: all dead %v after the start; guard kills %d, kernel kills %d, pids killed twice %d",
		n, all.Round(time.Millisecond), len(killed), kernel, twice)
	// As in TestRespawningWorkload, a loaded machine loses a race now and
	// then; the storm itself must not (35 of 100 before).
	if kernel > 3 {
		t.Errorf("the kernel OOM-killed %d of %d", kernel, n)
	}
}
