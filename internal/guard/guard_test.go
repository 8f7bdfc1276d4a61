package guard_test

import (
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/guard"
	"github.com/oom-guard/oom-guard/internal/kill"
	"github.com/oom-guard/oom-guard/internal/notify"
	"github.com/oom-guard/oom-guard/internal/reconcile"
	"github.com/oom-guard/oom-guard/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.RunHogIfRequested()
	// As the binary does (--nice), so that the guards these tests run in
	// this process race as the binary's do; their workloads run at nice 0
	// (testenv). Refused (not root), the real-kernel tests skip anyway.
	_ = guard.NiceProcess(-20)
	os.Exit(m.Run())
}

// events collects what the guard reports.
type events struct {
	guard.NopMetrics
	mu         sync.Mutex
	evs        []event.Event
	ch         chan event.Event
	standDowns int
	crossings  int
	guarded    int
	holdWaits  int
}

// waitGuardedN waits until the guard guards n cgroups: registering a new
// cgroup's thresholds takes the kernel tens of milliseconds.
func (e *events) waitGuardedN(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		e.mu.Lock()
		got := e.guarded
		e.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("guarding %d cgroups after 10s, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// events is also the guard's Metrics, to see what it decided.
func (e *events) SetGuarded(n int) { e.mu.Lock(); e.guarded = n; e.mu.Unlock() }
func (e *events) Crossing()        { e.mu.Lock(); e.crossings++; e.mu.Unlock() }
func (e *events) StandDown(string) { e.mu.Lock(); e.standDowns++; e.mu.Unlock() }
func (e *events) HoldWait()        { e.mu.Lock(); e.holdWaits++; e.mu.Unlock() }

func (e *events) holdWaitsSeen() int { e.mu.Lock(); defer e.mu.Unlock(); return e.holdWaits }

func (e *events) Send(ev event.Event) {
	e.mu.Lock()
	e.evs = append(e.evs, ev)
	e.mu.Unlock()
	select {
	case e.ch <- ev:
	default:
	}
}

func (e *events) wait(t *testing.T, reason event.Reason, d time.Duration) event.Event {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case ev := <-e.ch:
			if ev.Reason == reason {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %s event within %v; got %+v", reason, d, e.all())
		}
	}
}

func (e *events) all() []event.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]event.Event(nil), e.evs...)
}

// stage makes the stage that turns the guard's facts into the events a
// test sees (package reconcile).
type stage func(next reconcile.Sink) guard.Reporter

// withStage puts the stage between the guard and the test's sink: wrap's,
// or one without the kernel log whose short window keeps the tests quick.
// Registered before the guard's own cleanup, it stops after the guard.
func withStage(t *testing.T, sink *events, wrap stage) guard.Reporter {
	t.Helper()
	if wrap != nil {
		return wrap(sink)
	}
	rec := reconcile.New(reconcile.Config{Hostname: "test", Window: 50 * time.Millisecond}, sink)
	t.Cleanup(rec.Stop)
	return rec
}

// startGuard runs a guard over the test's own cgroup sub-tree only; it is
// stopped at the end of the test.
func startGuard(t *testing.T, cg *testenv.Cgroup, cfg guard.Config) *events {
	t.Helper()
	sink, stop := runGuard(t, cg, cfg)
	t.Cleanup(stop)
	return sink
}

// runGuard starts a guard and returns the function that stops it and
// waits until it has let go of every cgroup.
func runGuard(t *testing.T, cg *testenv.Cgroup, cfg guard.Config) (*events, func()) {
	t.Helper()
	g, sink := newGuard(t, cg, cfg)
	stopper := runInBackground(t, g, 5*time.Second, nil)
	waitGuarded(t, g)
	return sink, stopper
}

// startGuardHandle is startGuard, with the guard itself.
func startGuardHandle(t *testing.T, cg *testenv.Cgroup, cfg guard.Config) (*guard.Guard, *events) {
	t.Helper()
	g, sink := newGuard(t, cg, cfg)
	t.Cleanup(runInBackground(t, g, 5*time.Second, nil))
	waitGuarded(t, g)
	return g, sink
}

// newGuard makes a guard over the test's own cgroup sub-tree.
func newGuard(t *testing.T, cg *testenv.Cgroup, cfg guard.Config) (*guard.Guard, *events) {
	t.Helper()
	mem, err := cgroup.Open(cg.Mem.Path(cg.Rel, ""))
	if err != nil {
		t.Fatal(err)
	}
	freezer, err := cgroup.V1Sibling(mem.FS().Root, "freezer")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HoldOOM && cfg.StateFile == "" {
		// As the DaemonSet runs it: a hold needs its record (hold.go).
		cfg.StateFile = filepath.Join(t.TempDir(), "state.jsonl")
	}
	sink := &events{ch: make(chan event.Event, 100)}
	g, err := guard.New(cfg, mem, notify.V1Notifier{FS: mem.FS()},
		kill.Killer{Mem: mem.FS(), Freezer: freezer, Self: os.Getpid()}, withStage(t, sink, nil), sink)
	if err != nil {
		t.Fatal(err)
	}
	return g, sink
}

// runInBackground runs g until the returned function is called; that
// function (safe to call twice) waits for Run to return, then calls after
// if set: what the guard used must outlive it.
func runInBackground(t *testing.T, g *guard.Guard, timeout time.Duration, after func()) (stop func()) {
	t.Helper()
	stopc := make(chan struct{})
	done := make(chan error)
	go func() { done <- g.Run(stopc) }()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(stopc)
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("guard: %v", err)
				}
			case <-time.After(timeout):
				t.Errorf("guard did not stop within %v", timeout)
				return
			}
			if after != nil {
				after()
			}
		})
	}
}

func waitGuarded(t *testing.T, g *guard.Guard) {
	t.Helper()
	select {
	case <-g.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("the guard did not guard its cgroups within 10s")
	}
}

// policyConfig is testConfig with margins wide enough that a test of what
// a policy does is not decided by who wins the race on a loaded machine:
// that rate is bench/preempt's to measure (and TestGuardPreemptsKernel's).
func policyConfig() guard.Config {
	cfg := testConfig()
	cfg.MinMargin, cfg.MaxMargin = 16<<20, 30<<20
	return cfg
}

func testConfig() guard.Config {
	cfg := guard.DefaultConfig()
	cfg.Policy = guard.PolicyProcess

	return cfg
}

// onV1 is cfg as a guard on cgroup v1 runs it: guard.New widens the
// margins by how late the v1 notifier's thresholds can be.
func onV1(cfg guard.Config) guard.Config {
	cfg.ThresholdLag = notify.V1Notifier{}.ThresholdLag()
	return cfg
}

func oomKills(t *testing.T, cg *testenv.Cgroup, rel string) uint64 {
	t.Helper()
	return testenv.KernelOOMKills(t, rel)
}

// A process allocating as fast as it can is killed by the guard, and the
// kernel's OOM killer never runs.
func TestGuardPreemptsKernel(t *testing.T) {
	cg := testenv.NewCgroup(t)
	sink := startGuard(t, cg, testConfig())
	// A race can be lost on a loaded machine (bench/preempt measures the
	// rate: about 1 in 100 at this limit): up to three, each in a new
	// cgroup, and the guard must win one.
	for race := 1; ; race++ {
		name := "c" + strconv.Itoa(race)
		rel := cg.Child(t, name, 64<<20)
		hog := testenv.HogCommand(testenv.HogSpec{MiB: 0})
		cg.Start(t, rel, hog)
		ws := testenv.WaitExit(t, hog, 10*time.Second)
		if ws.Signal() != syscall.SIGKILL {
			t.Fatalf("hog ended with %v", ws)
		}
		if n := oomKills(t, cg, rel); n != 0 {
			if race < 3 {
				t.Logf("race %d: the kernel OOM-killed %d processes; again", race, n)
				continue
			}
			t.Fatalf("the kernel OOM-killed in all %d races: the guard lost them", race)
		}
		// A lost race may still have brought the guard's own late event.
		ev := sink.wait(t, event.KillProcess, 10*time.Second)
		for ev.OOMCgroup != cg.Path(name) {
			ev = sink.wait(t, event.KillProcess, 10*time.Second)
		}
		if len(ev.Processes) != 1 || ev.Processes[0].Pid != hog.Process.Pid {
			t.Fatalf("event names %+v, want pid %d", ev.Processes, hog.Process.Pid)
		}
		want := strconv.Itoa(hog.Process.Pid) + "("
		if !strings.HasPrefix(ev.Killed, want) || ev.Policy != "Process" || ev.Usage < ev.Threshold {
			t.Fatalf("event %+v", ev)
		}
		return
	}
}

// With noop the guard reports what it would kill and leaves the rest to the kernel.
func TestNoopLeavesItToTheKernel(t *testing.T) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "c", 64<<20)
	cfg := testConfig()
	cfg.Policy = guard.PolicyNoop
	sink := startGuard(t, cg, cfg)
	hog := testenv.HogCommand(testenv.HogSpec{MiB: 0})
	cg.Start(t, rel, hog)
	ev := sink.wait(t, event.WouldKill, 10*time.Second)
	if ev.Processes[0].Pid != hog.Process.Pid {
		t.Fatalf("would kill %+v", ev.Processes)
	}
	testenv.WaitExit(t, hog, 10*time.Second)
	if n := oomKills(t, cg, rel); n != 1 {
		t.Fatalf("kernel oom_kill = %d, want 1", n)
	}
	// The cgroup source alone (no kernel log) names the kernel's victim.
	// (Its memory at death is the kernel log's to tell: the processes seen
	// before the kill may have been seen only as the kernel reaped it.)
	k := sink.wait(t, event.CgroupOOM, 5*time.Second)
	if k.ProcCgroup != cg.Path("c") || len(k.Processes) != 1 || k.Processes[0].Pid != hog.Process.Pid ||
		k.Killed != strconv.Itoa(hog.Process.Pid)+"("+k.Processes[0].Comm+") " {
		t.Fatalf("kernel kill event %+v", k)
	}
	if n := len(filter(sink.all(), event.WouldKill)); n != 1 {
		t.Fatalf("noop reported %d times for one spike", n)
	}
	time.Sleep(200 * time.Millisecond) // every check after the notification done
	if n := len(filter(sink.all(), event.CgroupOOM)); n != 1 {
		t.Fatalf("one kernel kill reported %d times: %+v", n, filter(sink.all(), event.CgroupOOM))
	}
}

// Several kernel kills in one cgroup, one after another: each reported
// once, as many events as the kernel's own counter says, on kernels with
// the counter and (inferred from the processes gone) without.
func TestKernelKillsReportedOnceEach(t *testing.T) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "c", 64<<20)
	cfg := testConfig()
	cfg.Policy = guard.PolicyNoop
	sink := startGuard(t, cg, cfg)
	var hogs []*exec.Cmd
	for i := 0; i < 3; i++ {
		hog := testenv.HogCommand(testenv.HogSpec{MiB: 0})
		cg.Start(t, rel, hog)
		hogs = append(hogs, hog)
	}
	for _, hog := range hogs {
		testenv.WaitExit(t, hog, 20*time.Second)
	}
	kernel := oomKills(t, cg, rel)
	if kernel < 3 {
		t.Fatalf("kernel oom_kill = %d, want 3 (all three hogs)", kernel)
	}
	deadline := time.Now().Add(5 * time.Second)
	for uint64(len(filter(sink.all(), event.CgroupOOM))) < kernel && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // nothing more may come
	evs := filter(sink.all(), event.CgroupOOM)
	if uint64(len(evs)) != kernel {
		var named []string
		for _, ev := range evs {
			named = append(named, ev.Killed)
		}
		t.Fatalf("%d kernel kills (hogs %d %d %d) reported as %d events, naming %q", kernel,
			hogs[0].Process.Pid, hogs[1].Process.Pid, hogs[2].Process.Pid, len(evs), named)
	}
	// A counter event may name no victim (one the guard never saw); an
	// inferred one always names it. No victim is named twice.
	seen := map[int]bool{}
	for _, ev := range evs {
		if len(ev.Processes) == 0 {
			continue
		}
		if seen[ev.Processes[0].Pid] {
			t.Fatalf("victim %d reported twice: %q", ev.Processes[0].Pid, ev.Killed)
		}
		seen[ev.Processes[0].Pid] = true
	}
	if len(seen) == len(evs) {
		for _, hog := range hogs {
			if !seen[hog.Process.Pid] {
				t.Errorf("hog %d killed by the kernel, not named; events name %v", hog.Process.Pid, seen)
			}
		}
	}
}

// An OOM notification after which the kernel killed nothing is no kill:
// with oom_kill_disable set the kernel notifies (under_oom 1) and its
// tasks wait instead of dying. Nothing is reported, on kernels with the
// oom_kill counter and (inferring kills from the processes gone) without.
func TestOOMThatKillsNothingIsNotReported(t *testing.T) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "c", 64<<20)
	if err := os.WriteFile(cg.Path("c")+"/memory.oom_control", []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.Policy = guard.PolicyNoop
	sink := startGuard(t, cg, cfg)
	hog := testenv.HogCommand(testenv.HogSpec{MiB: 0})
	cg.Start(t, rel, hog)
	sink.wait(t, event.WouldKill, 10*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, err := os.ReadFile(cg.Path("c") + "/memory.oom_control")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(data), "under_oom 1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cgroup never went under OOM: %q", data)
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // the guard's checks after the notification: 50 ms
	if evs := filter(sink.all(), event.CgroupOOM); len(evs) != 0 {
		t.Fatalf("an OOM that killed nothing reported as %d kill(s): %+v", len(evs), evs)
	}
	// Let the waiting hog go: a higher limit, then the test's own kill.
	cg.SetLimit(t, rel, 256<<20)
	_ = hog.Process.Kill()
	testenv.WaitExit(t, hog, 10*time.Second)
	if n := oomKills(t, cg, rel); n != 0 {
		t.Fatalf("kernel oom_kill = %d with oom_kill_disable, want 0", n)
	}
}

func filter(evs []event.Event, r event.Reason) []event.Event {
	var out []event.Event
	for _, e := range evs {
		if e.Reason == r {
			out = append(out, e)
		}
	}
	return out
}

// The process policy kills the highest oom_score and spares the others.
func TestProcessPolicyPicksHighestScore(t *testing.T) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "c", 96<<20)
	var decoys []*exec.Cmd
	for _, adj := range []string{"100", "200"} {
		d := testenv.HogCommand(testenv.HogSpec{MiB: 16, Hold: true})
		cg.Start(t, rel, d)
		writeAdj(t, d.Process.Pid, adj)
		decoys = append(decoys, d)
	}
	time.Sleep(200 * time.Millisecond) // let the decoys allocate
	sink := startGuard(t, cg, policyConfig())
	victim := testenv.HogCommand(testenv.HogSpec{MiB: 0})
	cg.Start(t, cg.Child(t, "c/worker", 0), victim)
	writeAdj(t, victim.Process.Pid, "500")
	ev := sink.wait(t, event.KillProcess, 10*time.Second)
	testenv.WaitExit(t, victim, 5*time.Second)
	if ev.Processes[0].Pid != victim.Process.Pid || ev.ProcCgroup != cg.Path("c/worker") {
		t.Fatalf("killed %+v in %s, want %d", ev.Processes, ev.ProcCgroup, victim.Process.Pid)
	}
	// --guard-ms: the victim's memory takes a moment to come back; in that
	// moment the cgroup is still above its threshold, and no second
	// process may pay for the same spike.
	time.Sleep(300 * time.Millisecond)
	for _, d := range decoys {
		if err := d.Process.Signal(syscall.Signal(0)); err != nil {
			t.Fatalf("decoy %d died", d.Process.Pid)
		}
	}
	if n := len(filter(sink.all(), event.KillProcess)); n != 1 {
		t.Fatalf("%d kills for one spike, want 1: %+v", n, sink.all())
	}
}

func writeAdj(t *testing.T, pid int, adj string) {
	t.Helper()
	if err := os.WriteFile("/proc/"+strconv.Itoa(pid)+"/oom_score_adj", []byte(adj), 0); err != nil {
		t.Fatal(err)
	}
}

// The container policy kills every process of the victim's cgroup.
func TestContainerPolicyKillsEveryTask(t *testing.T) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "c", 64<<20)
	cfg := policyConfig()
	cfg.Policy = guard.PolicyContainer
	sink := startGuard(t, cg, cfg)
	idle := testenv.HogCommand(testenv.HogSpec{Kind: "sleep"})
	cg.Start(t, rel, idle)
	hog := testenv.HogCommand(testenv.HogSpec{MiB: 0})
	cg.Start(t, rel, hog)
	ev := sink.wait(t, event.KillContainer, 10*time.Second)
	testenv.WaitExit(t, hog, 5*time.Second)
	testenv.WaitExit(t, idle, 5*time.Second)
	if len(ev.Processes) != 2 || ev.Policy != "Container" {
		t.Fatalf("event %+v", ev)
	}
	if n := oomKills(t, cg, rel); n != 0 {
		t.Fatalf("kernel oom_kill = %d", n)
	}
}

// A cgroup full of page cache is left to the kernel's reclaim.
func TestPageCacheIsNotKilled(t *testing.T) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "c", 64<<20)
	sink := startGuard(t, cg, testConfig())
	dir, err := os.MkdirTemp("/var/tmp", "oomguard-cache-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	writer := testenv.HogCommand(testenv.HogSpec{Kind: "file", MiB: 256, Dir: dir})
	cg.Start(t, rel, writer)
	if ws := testenv.WaitExit(t, writer, 60*time.Second); ws.ExitStatus() != 0 {
		t.Fatalf("writer ended with %v", ws)
	}
	for _, ev := range sink.all() {
		t.Errorf("unexpected event %s: %s", ev.Reason, ev.Message)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if sink.crossings == 0 || sink.standDowns == 0 {
		t.Fatalf("crossings %d, stand-downs %d: the cache never reached the threshold", sink.crossings, sink.standDowns)
	}
	t.Logf("crossings %d, stand-downs %d", sink.crossings, sink.standDowns)
}

// A cgroup created while the guard runs is guarded, and a limit raised at
// run time moves the threshold instead of causing a kill.
func TestNewCgroupAndRaisedLimit(t *testing.T) {
	cg := testenv.NewCgroup(t)
	sink := startGuard(t, cg, testConfig())
	rel := cg.Child(t, "late", 64<<20)
	sink.waitGuardedN(t, 1)
	hog := testenv.HogCommand(testenv.HogSpec{MiB: 0})
	cg.Start(t, rel, hog)
	sink.wait(t, event.KillProcess, 10*time.Second)
	testenv.WaitExit(t, hog, 5*time.Second)

	raised := cg.Child(t, "raised", 64<<20)
	time.Sleep(20 * time.Millisecond)
	cg.SetLimit(t, raised, 256<<20)
	time.Sleep(20 * time.Millisecond)
	steady := testenv.HogCommand(testenv.HogSpec{MiB: 100, Hold: true})
	cg.Start(t, raised, steady)
	time.Sleep(1 * time.Second)
	if err := steady.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("process under a raised limit was killed; events %+v", sink.all())
	}
}

// --openSoftLimit sets each guarded cgroup's soft limit at its threshold,
// and stopping the guard puts the old value back.
func TestOpenSoftLimitRestoredOnStop(t *testing.T) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "soft", 100<<20)
	mem, _ := cgroup.Open(testenv.V1MemoryRoot)
	before, err := mem.SoftLimit(rel)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.OpenSoftLimit = true
	fdsBefore := openFds(t)
	_, stop := runGuard(t, cg, cfg)
	t.Cleanup(stop)
	if got, _ := mem.SoftLimit(rel); got != onV1(cfg).Threshold(100<<20) {
		t.Fatalf("soft limit %d while guarded, want the threshold %d", got, onV1(cfg).Threshold(100<<20))
	}
	stop()
	if got, _ := mem.SoftLimit(rel); got != before {
		t.Fatalf("soft limit %d after stop, want %d restored", got, before)
	}
	// Every eventfd closed (which unregisters it), the epoll set and
	// inotify too: the guard leaves nothing behind in the kernel.
	if after := openFds(t); !maps.Equal(after, fdsBefore) {
		t.Fatalf("notification fds after stop %v, before %v", after, fdsBefore)
	}
}

// openFds counts this process's eventfd, epoll and inotify fds.
func openFds(t *testing.T) map[string]int {
	t.Helper()
	// Go's own poller keeps an epoll fd and an eventfd once first used:
	// use it now so that it is counted on both sides.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	w.Close()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	for _, fd := range fds {
		if target, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && strings.HasPrefix(target, "anon_inode:") {
			n[target]++
		}
	}
	return n
}

// The inotify watches rebuilt from scratch (--inotifyResetSeconds) still
// see a cgroup created afterwards.
func TestInotifyReset(t *testing.T) {
	cg := testenv.NewCgroup(t)
	cfg := testConfig()
	cfg.InotifyReset = 100 * time.Millisecond
	// The reset is under test, not the race: a margin the kill cannot miss.
	cfg.MinMargin, cfg.MaxMargin = 16<<20, 30<<20
	sink := startGuard(t, cg, cfg)
	time.Sleep(350 * time.Millisecond) // three resets
	rel := cg.Child(t, "after-reset", 64<<20)
	sink.waitGuardedN(t, 1)
	hog := testenv.HogCommand(testenv.HogSpec{MiB: 0})
	cg.Start(t, rel, hog)
	ev := sink.wait(t, event.KillProcess, 10*time.Second)
	testenv.WaitExit(t, hog, 5*time.Second)
	if ev.OOMCgroup != cg.Path("after-reset") {
		t.Fatalf("event %+v", ev)
	}
}
