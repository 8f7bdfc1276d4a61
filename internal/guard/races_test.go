package guard_test

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/guard"
	kernelcaps "github.com/oom-guard/oom-guard/internal/kernel"
	"github.com/oom-guard/oom-guard/internal/kill"
	"github.com/oom-guard/oom-guard/internal/notify"
	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/testenv"
)

// Sustained pressure (issue 12, case 1): a supervisor restarts an
// allocating worker as soon as one dies, for 20 s. Every worker is
// killed by the guard, each kill reported once, naming its own victim:
// "one spike, one kill" must not leave the cgroup unguarded while the
// next worker fills it (the kernel did about half the kills).
func TestRespawningWorkload(t *testing.T) {
	// Each worker is a new race: the kernel killed a third to a half of
	// them before, 0 to 2% at nice -20, none in 6 of 7 rounds of
	// bench/preempt with every thread real-time (1 of 2,000 in the
	// seventh, a wake-up the host's steal delayed). With the hold
	// (--v1-hold-oom, 3.12 on) a worker that reaches the limit first
	// waits for the guard, so the kernel kills none, in one round. On
	// the 3.10 surface, with no hold, a round in which the kernel kills
	// more than 10% is run once more (see respawnRound).
	likeTheBinary(t)
	for round := 1; ; round++ {
		share, ok := respawnRound(t)
		if ok || round == 2 || kernelcaps.HasOOMWait() {
			if !ok {
				t.Errorf("the kernel's share of the kills was %.1f%% (round %d)", share, round)
			}
			return
		}
		t.Logf("round %d: the kernel's share %.1f%%; again", round, share)
	}
}

// likeTheBinary runs this test's in-process guards as the binary runs
// itself (--rt-others): every thread of the test process SCHED_RR 1 under
// the loop's SCHED_FIFO, back to normal at the end (a VM started later by
// another test must not inherit it; the workloads reset themselves).
func likeTheBinary(t *testing.T) {
	if err := guard.RealtimeProcess(1); err != nil {
		testenv.Skip(t, "SCHED_RR for the guard's threads, as the binary runs: "+err.Error())
	}
	t.Cleanup(func() {
		if err := guard.RealtimeProcess(0); err != nil {
			t.Errorf("back to normal scheduling: %v", err)
		}
	})
}

// respawnRound runs one 20 s round of TestRespawningWorkload: the kernel's
// share of the kills, and whether it is low enough. Other failures end the
// test.
func respawnRound(t *testing.T) (float64, bool) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "pool", 64<<20)
	sink, stop := runGuard(t, cg, testConfig())
	defer stop()
	sup := supervisor(t)
	steal := testenv.StartSteal()
	cg.Start(t, rel, sup)
	time.Sleep(20 * time.Second)
	stolen := steal.Share()
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
	t.Logf("20 s of respawning workers: guard kills %d, kernel kills %d (%d CgroupOOM events), hold waits %d; CPU time stolen by the host %s",
		len(byGuard), kernel, len(cgroupOOMs), sink.holdWaitsSeen(), stolen)
	if byKernel[sup.Process.Pid] > 0 {
		t.Errorf("the kernel killed the supervisor")
	}
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
	switch n := uint64(len(cgroupOOMs)); {
	case n == kernel:
	case n < kernel && !kernelcaps.HasOOMKillCounter(testenv.V1MemoryRoot):
		// Without memory.oom_control's oom_kill (3.10-4.12), and without
		// the kernel log (not read here), a kernel victim reaped before
		// the guard looked leaves no trace (docs/old-kernels.md): fewer
		// events, never more, never one twice.
		t.Logf("%d CgroupOOM events for %d kernel kills: no oom_kill counter, no kernel log", n, kernel)
	default:
		t.Errorf("%d CgroupOOM events for %d kernel kills", n, kernel)
	}
	if len(byGuard) < 20 {
		t.Errorf("only %d workers killed in 20 s", len(byGuard))
	}
	total := uint64(len(byGuard)) + kernel
	share := 100 * float64(kernel) / float64(max(total, 1))
	if kernelcaps.HasOOMWait() {
		return share, kernel == 0
	}
	// No hold (3.10): where the host takes CPU time from this virtual
	// machine, a crossing's wake-up sent to the loop on the other virtual
	// CPU waited up to 8.8 ms for the host to run it (ftrace;
	// guard/affinity.go), and every race the kernel won was of that kind:
	// 0-1% here, with the host's steal the log line gives. What this bound
	// must see gone is the third to half of the kills the kernel took
	// while the cgroup was left unguarded after each kill.
	return share, kernel*10 <= total
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
// in each, all released at the same moment. Each is killed once, never
// by the guard twice nor by the guard and the kernel both (the kernel
// killed 35 of them, most already signalled by the guard, which then
// signalled some a second time).
func TestStormOfCrossings(t *testing.T) {
	// The kernel killed 34 to 63 of 100 before, 0 to 5 at nice -20, none in
	// 600 storms of bench/preempt with every thread real-time. With the
	// hold (3.12 on) it must kill none, in one round; on the 3.10 surface
	// a round in which it kills any is run once more, for the rare outlier
	// on a machine shared with other work.
	likeTheBinary(t)
	for round := 1; ; round++ {
		kernel := stormRound(t)
		if kernel == 0 || round == 2 || kernelcaps.HasOOMWait() {
			if kernel > 0 {
				t.Errorf("the kernel killed %d in a storm of 100 (round %d)", kernel, round)
			}
			return
		}
		t.Logf("round %d: the kernel killed %d of 100; again", round, kernel)
	}
}

// stormRound runs one storm of TestStormOfCrossings and returns how many
// processes the kernel killed; every other failure is the test's.
func stormRound(t *testing.T) uint64 {
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
	t.Logf("%d cgroups crossing at once: all dead %v after the start; guard kills %d, kernel kills %d, pids killed twice %d, hold waits %d",
		n, all.Round(time.Millisecond), len(killed), kernel, twice, sink.holdWaitsSeen())
	// The guard never signals a process twice (above), nor, but for a rare
	// race (the kernel's kill and the guard's in the same moment), one the
	// kernel is killing: before, 74 guard and 53 kernel kills of 100 with
	// 17 pids signalled twice.
	if got := uint64(len(killed)) + kernel; got < n || got > n+3 {
		t.Errorf("%d guard kills and %d kernel kills for %d processes", len(killed), kernel, n)
	}
	return kernel
}

// Scope (issue 12, case 3): the victim made ready at the early threshold
// moves out of the guard's root before the crossing. It is not killed (the
// guard once killed it there 3 ms later, naming the cgroup it had left);
// the process the kernel would kill now, the one still growing, is.
func TestVictimLeavesBeforeTheKill(t *testing.T) {
	cfg := testConfig()
	// The early threshold 8 MiB below the threshold (53.5 and 61.5 MiB),
	// not 3.2: a throttled step of the big process below is 1 to 3 MiB
	// (3.2 MiB once, on a fast idle machine: all three tries overshot).
	cfg.ReclaimableRatio, cfg.PrepareAhead = 0, 8<<20
	early, threshold := onV1(cfg).EarlyThreshold(64<<20), onV1(cfg).Threshold(64<<20)
	mem, _ := cgroup.Open(testenv.V1MemoryRoot)
	for try := 1; ; try++ {
		cg := testenv.NewCgroup(t)
		inner := cg.Child(t, "g", 0)
		rel := cg.Child(t, "g/c", 64<<20)
		out := cg.Child(t, "out", 0)
		sink := startGuard(t, &testenv.Cgroup{Mem: cg.Mem, Rel: inner}, cfg)
		usage := func() uint64 { u, _ := mem.Usage(rel); return u }
		// The big one grows past the early threshold, where the guard
		// makes its kill ready, and is stopped short of the threshold.
		// It runs throttled, and from 6 MiB below the early threshold at
		// 1 ms of CPU every 200 ms (1 to 3 MiB a step), so that the test
		// can stop it in that 8 MiB window.
		slow := slowCPU(t)
		big := testenv.HogCommand(testenv.HogSpec{MiB: 0})
		big.Env = append(big.Env, "GOMAXPROCS=1")
		gate := startGated(t, cg, rel, big)
		if err := os.WriteFile(slow+"/cgroup.procs", []byte(fmt.Sprint(big.Process.Pid)), 0); err != nil {
			t.Fatal(err)
		}
		_, _ = gate.Write([]byte{1})
		slowed, started := false, time.Now()
		for usage() < early+(3<<18) {
			if time.Since(started) > 20*time.Second {
				break
			}
			if !slowed && usage() > early-(6<<20) {
				throttle(t, slow, "200000", "1000")
				slowed = true
			}
			time.Sleep(2 * time.Millisecond)
		}
		if u := usage(); u < early {
			if try < 3 {
				t.Logf("try %d: the big process did not reach the early threshold in 20 s (usage %d, running %v); again", try, u, running(big.Process.Pid))
				continue
			}
			t.Fatalf("the big process did not reach the early threshold in %d tries", try)
		}
		_ = big.Process.Signal(syscall.SIGSTOP)
		time.Sleep(100 * time.Millisecond)
		if u := usage(); u >= threshold || !running(big.Process.Pid) || len(sink.all()) > 0 {
			if try < 3 {
				t.Logf("try %d: the big process was not stopped short of the threshold (usage %d); again", try, u)
				continue
			}
			t.Fatalf("the big process was not stopped short of the threshold in %d tries", try)
		}
		// It leaves the guard's scope; v1 leaves its pages charged to rel.
		if err := cg.Mem.AddProc(out, big.Process.Pid); err != nil {
			t.Fatal(err)
		}
		grower := testenv.HogCommand(testenv.HogSpec{MiB: 0})
		cg.Start(t, rel, grower)
		ws := testenv.WaitExit(t, grower, 10*time.Second)
		time.Sleep(100 * time.Millisecond)
		if !running(big.Process.Pid) {
			t.Fatalf("the process that left the guard's scope was killed; events %+v", sink.all())
		}
		if ws.Signal() != syscall.SIGKILL {
			t.Fatalf("the grower ended with %v", ws)
		}
		if n := oomKills(t, cg, rel); n != 0 {
			if try < 3 {
				t.Logf("try %d: the kernel killed first: a lost race; again", try)
				continue
			}
			t.Fatalf("the kernel killed first in %d tries", try)
		}
		ev := sink.wait(t, event.KillProcess, 5*time.Second)
		if len(ev.Processes) != 1 || ev.Processes[0].Pid != grower.Process.Pid || ev.ProcCgroup != cg.Path("g/c") {
			t.Fatalf("guard event %+v, want the grower %d in %s", ev, grower.Process.Pid, cg.Path("g/c"))
		}
		return
	}
}

// slowCPU makes a v1 cpu cgroup that lets its processes run 20 ms every
// 100 ms (throttle changes that), removed at the end of the test (after
// its processes are killed).
func slowCPU(t *testing.T) string {
	t.Helper()
	dir := fmt.Sprintf("/sys/fs/cgroup/cpu/oomguard-test-slow-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	if err := os.Mkdir(dir, 0o755); err != nil {
		testenv.Skip(t, "no v1 cpu controller: "+err.Error())
	}
	t.Cleanup(func() {
		for i := 0; i < 100 && os.Remove(dir) != nil; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	})
	throttle(t, dir, "100000", "20000")
	return dir
}

// throttle sets a cpu cgroup's bandwidth: quota microseconds every period.
func throttle(t *testing.T, dir, period, quota string) {
	t.Helper()
	for _, fv := range [][2]string{{"cpu.cfs_quota_us", "-1"}, {"cpu.cfs_period_us", period}, {"cpu.cfs_quota_us", quota}} {
		if err := os.WriteFile(dir+"/"+fv[0], []byte(fv[1]), 0); err != nil {
			t.Fatal(err)
		}
	}
}

// running tells whether pid is a process that is not a zombie.
func running(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

func sub(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return 0
}

// lockedBuffer is klog's output in a test.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range strings.Split(l.b.String(), "\n") {
		if strings.Contains(line, sub) {
			n++
		}
	}
	return n
}

// captureLog sends klog's output to a buffer until the end of the test.
func captureLog(t *testing.T) *lockedBuffer {
	buf := &lockedBuffer{}
	klog.LogToStderr(false)
	klog.SetOutput(buf)
	t.Cleanup(func() { klog.LogToStderr(true) })
	return buf
}

// A cgroup that cannot be helped (issue 12, case 5): above its threshold
// with nothing in it to kill, as v1 leaves it when a process moves away
// and its pages stay charged. For 10 s the guard looks again with back-off,
// says so once, counts it once; it used to look every 5 ms and log each
// time (2,463 lines in 10 s, 6% CPU).
func TestStuckCgroupDoesNotSpin(t *testing.T) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "x", 64<<20)
	out := cg.Child(t, "out", 0)
	log := captureLog(t)
	sink := startGuard(t, cg, testConfig())
	hog := testenv.HogCommand(testenv.HogSpec{MiB: 48, Hold: true})
	cg.Start(t, rel, hog)
	mem, _ := cgroup.Open(testenv.V1MemoryRoot)
	var u uint64
	for deadline := time.Now().Add(10 * time.Second); u < 48<<20; time.Sleep(10 * time.Millisecond) {
		if u, _ = mem.Usage(rel); time.Now().After(deadline) {
			t.Fatalf("usage %d: the hog did not allocate", u)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if err := cg.Mem.AddProc(out, hog.Process.Pid); err != nil {
		t.Fatal(err)
	}
	u, _ = mem.Usage(rel)
	limit := (u + 512<<10) &^ 4095
	if got := onV1(testConfig()).Threshold(limit); got > u {
		t.Fatalf("threshold %d above usage %d", got, u)
	}
	idle := cpuPercent(3 * time.Second) // this process with the guard, before: the baseline
	cg.SetLimit(t, rel, limit)
	cpu := cpuPercent(10*time.Second) - idle
	lines := log.lines("cgroup /x:")
	sink.mu.Lock()
	standDowns := sink.standDowns
	sink.mu.Unlock()
	t.Logf("10 s above the threshold with nothing to kill: %d log lines, CPU %.2f%% above this process's %.2f%% before, %d stand-downs counted",
		lines, cpu, idle, standDowns)
	if lines > 5 {
		t.Errorf("%d log lines about the stuck cgroup in 10 s", lines)
	}
	if cpu >= 1 {
		t.Errorf("the stuck cgroup cost %.2f%% of a CPU", cpu)
	}
	if standDowns != 1 {
		t.Errorf("%d stand-downs counted, want 1 (one episode)", standDowns)
	}
	if !running(hog.Process.Pid) {
		t.Errorf("the process outside the cgroup was killed")
	}
}

// cpuPercent is the CPU this process uses over d, in percent of one CPU.
func cpuPercent(d time.Duration) float64 {
	var r0, r1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
	start := time.Now()
	time.Sleep(d)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
	used := r1.Utime.Nano() + r1.Stime.Nano() - r0.Utime.Nano() - r0.Stime.Nano()
	return float64(used) / float64(time.Since(start).Nanoseconds()) * 100
}

// The child guard of TestRestartRestoresOperatorsSoftLimit: this test
// binary re-executed with these set runs a guard and is SIGKILLed.
const (
	envChildRoot  = "OOMGUARD_TEST_CHILD_GUARD_ROOT"
	envChildState = "OOMGUARD_TEST_CHILD_GUARD_STATE"
)

func init() {
	root := os.Getenv(envChildRoot)
	if root == "" {
		return
	}
	mem, err := cgroup.Open(root)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	cfg := testConfig()
	cfg.OpenSoftLimit, cfg.StateFile = true, os.Getenv(envChildState)
	var n guard.Notifier = notify.V1Notifier{FS: mem.FS()}
	k := kill.Killer{Mem: mem.FS(), Self: os.Getpid()}
	if mem.Version() == cgroup.VersionV2 {
		if n, err = notify.NewV2Notifier(mem.FS(), notify.DefaultV2Options()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		k.Unified = true
	}
	g, err := guard.New(cfg, mem, n, k, nopReporter{}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	go func() { <-g.Ready(); fmt.Println("ready") }()
	_ = g.Run(make(chan struct{}))
	os.Exit(3)
}

type nopReporter struct{}

func (nopReporter) Acted(event.Action)        {}
func (nopReporter) Counted(event.CounterKill) {}

// Restart (issue 12, case 4): with --openSoftLimit a guard is SIGKILLed,
// and the next one restores the operator's soft limit on stop, not the
// dead guard's threshold (unlimited and 96 MiB were lost so before).
func TestRestartRestoresOperatorsSoftLimit(t *testing.T) {
	cg := testenv.NewCgroup(t)
	unset := cg.Child(t, "unset", 128<<20)
	set := cg.Child(t, "set", 128<<20)
	if err := cg.Mem.WriteFile(set, "memory.soft_limit_in_bytes", fmt.Sprint(96<<20)); err != nil {
		t.Fatal(err)
	}
	mem, _ := cgroup.Open(testenv.V1MemoryRoot)
	soft := func(rel string) uint64 {
		v, err := mem.SoftLimit(rel)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	want := map[string]uint64{unset: soft(unset), set: soft(set)}
	state := t.TempDir() + "/state"

	child := startChildGuard(t, cg.Mem.Path(cg.Rel, ""), state)
	cfg := testConfig()
	cfg.OpenSoftLimit = true
	for rel := range want {
		if got := soft(rel); got != pageFloor(onV1(cfg).Threshold(128<<20)) {
			t.Fatalf("%s: soft limit %d under the first guard, want its threshold", rel, got)
		}
	}
	_ = child.Process.Signal(syscall.SIGKILL)
	_ = child.Wait()

	cfg.StateFile = state
	_, stop := runGuard(t, cg, cfg)
	stop()
	for rel, w := range want {
		if got := soft(rel); got != w {
			t.Errorf("%s: soft limit %d after the second guard stopped, want the operator's %d", rel, got, w)
		}
	}
}

// startChildGuard runs a guard with --openSoftLimit and state file state
// over root in a process of its own (this test binary), once it guards.
func startChildGuard(t *testing.T, root, state string) *exec.Cmd {
	t.Helper()
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), envChildRoot+"="+root, envChildState+"="+state)
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	ready := make(chan bool, 1)
	go func() {
		var b [6]byte
		_, err := io.ReadFull(out, b[:])
		ready <- err == nil && string(b[:5]) == "ready"
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatal("the child guard did not start")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the child guard not ready in 60 s")
	}
	return child
}
