// Command preempt measures how often the guard beats the kernel's cgroup
// OOM killer and how fast it reacts, on real kernels: cgroup v1 on this
// machine (as root), and cgroup v2 in the VM of internal/testenv/vm (the
// same code, run there by the guest test TestBenchV2). For each limit and
// number of allocating threads it runs a process that allocates and
// touches memory as fast as it can in a fresh cgroup, under a guard with
// the default margins and the process policy, and counts who killed it:
// the guard (its event) or the kernel (the cgroup's oom_kill counter). On
// v2 it does so for each crossing mechanism compared (see
// internal/notify/memcg_v2.go). Reaction time is from the loop's wake-up
// (v1: the kernel's threshold eventfd; v2: the sampler's timer or a
// memory.events change) to the SIGKILL; overshoot is how far above the
// threshold usage was when the guard looked. Then (v1) a respawning
// workload and a storm of crossings (races.go). Then it measures the time from
// a kernel OOM kill to its event, and the guard's idle cost with many
// guarded cgroups.
//
//	go run ./bench/preempt [-runs 20] [-limits 64,256,1024] [-threads 1,2] [-oldkernel 3.10] [-respawn 20s] [-storm 100]
//	    [-idle 1000,5000,10000] [-idle-limited-pods 0.6] [-idle-limit 60Mi -idle-gomemlimit 45MiB] [-churn 10]
//	    [-reset-stall 10000] [-startup 1000,3000 -startup-registrars 16,64]
//	    [-v2=true] [-v2-runs 20] [-v2-limits 64,256] [-v2-mechanisms events,psi,poll,poll+events,events+high,poll+events+high]
//
// Everything it creates lives under oomguard-bench-PID at the top of the
// hierarchy and is removed at the end; it kills only the processes it
// started.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/oom-guard/oom-guard/internal/asynclog"
	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/guard"
	"github.com/oom-guard/oom-guard/internal/notify"
	"github.com/oom-guard/oom-guard/internal/testenv"
	"github.com/oom-guard/oom-guard/internal/testenv/vm"
)

// config is one hierarchy's benchmark; the v2 one travels to the VM as JSON.
type config struct {
	Runs       int
	Limits     []int // MiB
	Threads    []int
	Mechanisms []string // v2 only; v1 has its eventfd
	Idle       []int    // known cgroups for the idle cost, one row each; none skips it
	IdleFor    time.Duration
	IdleV1     idleSpec      // v1: the rest of the idle-cost mode (idle.go)
	EventRuns  int           // kernel OOM kills for the kill-to-event latency; 0 skips it
	Respawn    time.Duration // v1: the respawning workload's duration; 0 skips it
	Storm      int           // v1: cgroups in the storm; 0 skips it
	Lag        int           // v1: cgroups whose threshold notification lag is measured (lag.go); 0 skips it
	ResetStall int           // v1: known cgroups for the loop's stall during inotify resets (stall.go); 0 skips it
	StallRuns  int           // v1: races per limit started during resets
	Startup    []int         // limited cgroups to time the start over (startup.go)
	StartupBy  []int         // registrations at once to compare at start
}

// envConfig carries the v2 config into the VM.
const envConfig = "OOMGUARD_BENCH_CONFIG"

// v2Table is the file the VM brings back with the v2 tables.
const v2Table = "preempt-v2.md"

func main() {
	testenv.RunHogIfRequested()
	var v1, v2 config
	runs := flag.Int("runs", 20, "v1: runs per limit and thread count")
	limits := flag.String("limits", "64,256,1024", "v1: limits to test, MiB")
	threads := flag.String("threads", "1,2", "allocating threads to test")
	idle := flag.String("idle", "1000", "known cgroups for the idle cost, one row each, e.g. 1000,5000,10000 (0 skips it)")
	flag.DurationVar(&v1.IdleFor, "idle-for", 10*time.Second, "how long to measure the idle guard (and to let it rest after the churn)")
	flag.StringVar(&v1.IdleV1.GuardBin, "guard-bin", "", "v1: oom-guard binary for the idle measurement (default: build it)")
	flag.Float64Var(&v1.IdleV1.LimitedPod, "idle-limited-pods", 0.6, "v1 idle: share of pods with a memory limit (a limited pod has 2 limited cgroups of 3)")
	idleLimit := flag.String("idle-limit", "", "v1 idle: memory limit of the guard's own cgroup, e.g. 60Mi (default: none)")
	flag.StringVar(&v1.IdleV1.GoMemLimit, "idle-gomemlimit", "", "v1 idle: GOMEMLIMIT for the guard, e.g. 45MiB (the manifest's)")
	flag.IntVar(&v1.IdleV1.Churn, "churn", 0, "v1 idle: bursts of short-lived limited cgroups after the idle measurement")
	flag.IntVar(&v1.IdleV1.ChurnSize, "churn-size", 1000, "v1 idle: cgroups in each burst")
	flag.IntVar(&v1.EventRuns, "event-runs", 20, "kernel OOM kills for the kill-to-event latency (0 skips it)")
	flag.DurationVar(&v1.Respawn, "respawn", 20*time.Second, "v1: how long the respawning workload runs (0 skips it)")
	flag.IntVar(&v1.Storm, "storm", 100, "v1: cgroups crossing at once in the storm (0 skips it)")
	flag.IntVar(&v1.Lag, "lag", 100, "v1: cgroups crossing at once whose threshold notification lag is measured, nobody killing (0 skips it)")
	flag.IntVar(&v1.ResetStall, "reset-stall", 0, "v1: known cgroups (one in ten limited) for the loop's longest stall during inotify resets, and races run during resets (0 skips it)")
	flag.IntVar(&v1.StallRuns, "reset-stall-runs", 20, "v1: races per limit (64 MiB, 1 GiB) started during inotify resets")
	startup := flag.String("startup", "", "limited cgroups to time the guard's start over, e.g. 1000,3000 (empty skips it)")
	startupBy := flag.String("startup-registrars", "16", "registrations at once to compare at start")
	doV1 := flag.Bool("v1", true, "run the cgroup v1 benchmark on this machine (root, v1 memory hierarchy)")
	doV2 := flag.Bool("v2", true, "run the cgroup v2 benchmark in the VM (internal/testenv/vm; scripts/vm-kernel)")
	v2Runs := flag.Int("v2-runs", 20, "v2: runs per mechanism, limit and thread count")
	v2Limits := flag.String("v2-limits", "64,256", "v2: limits to test, MiB (the VM has 1 GiB)")
	v2Mechs := flag.String("v2-mechanisms", "events,psi,poll,poll+events,events+high,poll+events+high",
		"v2: crossing mechanisms to compare, the last being the guard's default; +high: with the memory.high tripwire at the threshold")
	v2Timeout := flag.Duration("v2-timeout", 40*time.Minute, "v2: bound on the whole VM run")
	oldKernel := flag.String("oldkernel", "", "v1: run under cmd/oldkernel's surface of this kernel (3.10, 4.14, 4.20): the guard with an old kernel's system calls and files")
	flag.Parse()
	// As the binary does (--nice), so that the figures are the binary's;
	// the workloads run at nice 0 (testenv).
	if err := guard.NiceProcess(-20); err != nil {
		fmt.Fprintln(os.Stderr, "preempt:", err)
	}
	logs := asynclog.Klog(nil, 4096)
	defer logs.Close(2 * time.Second)
	if *oldKernel != "" && os.Getenv("OOMGUARD_OLDKERNEL") == "" {
		os.Exit(underOldKernel(*oldKernel))
	}
	v1.Runs, v1.Limits, v1.Threads = *runs, ints(*limits), ints(*threads)
	for _, n := range ints(*idle) {
		if n > 0 {
			v1.Idle = append(v1.Idle, n)
		}
	}
	if *idleLimit != "" {
		q, err := parseBytes(*idleLimit)
		if err != nil {
			fmt.Fprintln(os.Stderr, "-idle-limit:", err)
			os.Exit(2)
		}
		v1.IdleV1.Limit = q
	}
	v1.Startup, v1.StartupBy = ints(*startup), ints(*startupBy)
	v2 = v1
	v2.Runs, v2.Limits, v2.Mechanisms, v2.IdleV1 = *v2Runs, ints(*v2Limits), strings.Split(*v2Mechs, ","), idleSpec{}
	v2.Respawn, v2.Storm, v2.Lag, v2.ResetStall, v2.Startup = 0, 0, 0, 0, nil
	failed := false
	if *doV1 {
		// As the binary does (--rt-others); back to normal before the VM
		// starts, which would inherit it. The workloads reset themselves
		// (testenv).
		if err := guard.RealtimeProcess(1); err != nil {
			fmt.Fprintln(os.Stderr, "preempt:", err)
		}
		if err := run(v1Hierarchy, v1, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "preempt v1:", err)
			failed = true
		}
		_ = guard.RealtimeProcess(0)
	}
	if *doV2 {
		if err := runInVM(v2, *v2Timeout, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "preempt v2:", err)
			failed = true
		}
	}
	if failed {
		logs.Close(2 * time.Second)
		os.Exit(1)
	}
}

// underOldKernel runs this benchmark again under cmd/oldkernel (built
// now), whose seccomp filter answers ENOSYS to every system call the old
// kernel lacked: the guard in it kills by kill(2), opens without openat2,
// counts kernel kills without oom_kill, as on that kernel.
func underOldKernel(release string) int {
	dir, err := os.MkdirTemp("", "oomguard-bench-oldkernel-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	helper := filepath.Join(dir, "oldkernel")
	build := exec.Command("go", "build", "-o", helper, "./cmd/oldkernel")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build cmd/oldkernel: %v\n%s", err, out)
		return 1
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cmd := exec.Command(helper, append([]string{"-kernel", release, self}, os.Args[1:]...)...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "under the old kernel's surface:", err)
		return 1
	}
	return 0
}

func ints(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if v, err := strconv.Atoi(strings.TrimSpace(f)); err == nil {
			out = append(out, v)
		}
	}
	return out
}

// runInVM runs the v2 benchmark in the VM and copies its tables to out.
func runInVM(c config, timeout time.Duration, out io.Writer) error {
	js, err := json.Marshal(c)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "booting the cgroup v2 VM for the v2 benchmark (emulated: slow)...\n")
	res, err := vm.BootCommand("./bench/preempt", vm.Options{
		Run: "^TestBenchV2$", Env: append([]string{envConfig + "=" + string(js)}, goEnv()...),
		Timeout: timeout, MemoryMiB: 1024,
	})
	if res != nil {
		if table, ok := res.Files[v2Table]; ok {
			_, _ = out.Write(table)
		}
		for _, t := range res.Tests {
			if t.Result != "pass" {
				fmt.Fprintf(os.Stderr, "%s: %s\n%s", t.Name, t.Result, t.Output)
				if err == nil {
					err = fmt.Errorf("%s in the VM: %s", t.Name, t.Result)
				}
			}
		}
	}
	return err
}

// collector is the guard's reporter: it records each kill's victim pid.
type collector struct {
	mu        sync.Mutex
	killed    map[int]bool
	react     []time.Duration
	overshoot []uint64
}

func (c *collector) Acted(a event.Action) {
	if a.Reason != event.KillProcess {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range a.Killed {
		c.killed[p.Pid] = true
	}
	c.overshoot = append(c.overshoot, a.Usage-min(a.Usage, a.Threshold))
}

func (c *collector) Counted(event.CounterKill) {}

func (c *collector) observe(d time.Duration) {
	c.mu.Lock()
	c.react = append(c.react, d)
	c.mu.Unlock()
}

// reset starts a new row.
func (c *collector) reset() {
	c.mu.Lock()
	c.react, c.overshoot = nil, nil
	c.mu.Unlock()
}

type row struct {
	mechanism                                        string
	limitMiB, threads, runs, guardKills, kernelKills int
	other                                            int
	holdWaits                                        int64 // runs won only because the cgroup was held (armed)
	react                                            []time.Duration
	overshoot                                        []uint64
}

// run benchmarks hierarchy h on this machine's kernel and writes its
// tables to out.
func run(h hierarchy, c config, out io.Writer) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root")
	}
	if err := h.check(); err != nil {
		return fmt.Errorf("needs the cgroup %s memory hierarchy at %s: %v", h.version, h.mount.Root, err)
	}
	top := fmt.Sprintf("/oomguard-bench-%d", os.Getpid())
	if err := h.mkdir(top); err != nil {
		return err
	}
	defer removeTree(h.mount, top)
	defer cleanUpOnSignal(h.mount, top)()
	mechs := c.Mechanisms
	if h.version == "v1" || len(mechs) == 0 {
		mechs = []string{"eventfd"}
	}
	cfg, removeState, err := killingConfig()
	if err != nil {
		return err
	}
	defer removeState()
	var rows []row
	var floor string
	for _, mech := range mechs {
		if c.Runs == 0 {
			break // -runs 0: only the other rows
		}
		base := fmt.Sprintf("%s/mechanism-%s", top, strings.ReplaceAll(mech, "+", "-"))
		if err := h.mkdir(base); err != nil {
			return err
		}
		mr, f, err := runMechanism(h, base, mech, cfg, c)
		if err != nil {
			return err
		}
		rows, floor = append(rows, mr...), f
	}
	if len(rows) > 0 {
		printTable(out, h, rows, cfg, floor)
	}
	if c.Respawn > 0 {
		if err := respawnRow(h, top, c.Respawn, out); err != nil {
			return err
		}
	}
	if c.Storm > 0 {
		if err := stormRow(h, top, c.Storm, out); err != nil {
			return err
		}
	}
	if c.Lag > 0 {
		if err := lagRow(h, top, c.Lag, out); err != nil {
			return err
		}
	}
	if len(c.Startup) > 0 {
		if err := startupRows(h, top, c.Startup, c.StartupBy, out); err != nil {
			return err
		}
	}
	if c.ResetStall > 0 {
		if err := stallRow(h, top, c.ResetStall, c.StallRuns, out); err != nil {
			return err
		}
	}
	if c.EventRuns > 0 {
		if err := eventLatency(h, top, c.EventRuns, out); err != nil {
			return err
		}
	}
	if len(c.Idle) > 0 && h.version == "v1" {
		s := c.IdleV1
		s.Known, s.For = c.Idle, c.IdleFor
		return idleCost(h.mount, top, s, out)
	}
	for _, n := range c.Idle {
		if err := idleCostInProcess(h, top, n, c.IdleFor, out); err != nil {
			return err
		}
	}
	return nil
}

// runMechanism runs every limit and thread count under one guard with
// mechanism mech, in cgroups below base. A mechanism ending in "+high" runs
// with the memory.high tripwire (--memory-high-tripwire, the default),
// which puts memory.high at the threshold; without it the crossing is seen
// by the named detectors alone.
func runMechanism(h hierarchy, base, mech string, cfg guard.Config, c config) ([]row, string, error) {
	detector, high := strings.CutSuffix(mech, "+high")
	cfg.HighTripwire, cfg.OpenSoftLimit = high, false
	parts, err := h.parts(base, detector)
	if err != nil {
		return nil, "", err
	}
	defer parts.close()
	mem := parts.mem
	floor := ""
	if g, ok := parts.notifier.(interface{ GrowthFloor() float64 }); ok {
		floor = fmt.Sprintf(", assumed growth at least %.0f MiB/s (measured)", g.GrowthFloor()/(1<<20))
	}
	col := &collector{killed: map[int]bool{}}
	arm := &armed{}
	g, err := guard.New(cfg, mem, parts.notifier, parts.killer, col, arm)
	if err != nil {
		return nil, "", err
	}
	g.Observe = col.observe
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- g.Run(stop) }()
	var rows []row
	for _, lim := range c.Limits {
		for _, th := range c.Threads {
			r := row{mechanism: mech, limitMiB: lim, threads: th, runs: c.Runs}
			col.reset()
			waitsBefore := arm.holdWaits.Load()
			for i := 0; i < c.Runs; i++ {
				who, err := oneRun(h, fmt.Sprintf("%s/l%d-t%d-r%d", base, lim, th, i), uint64(lim)<<20, th, col, arm)
				if err != nil {
					close(stop)
					<-done
					return nil, "", err
				}
				switch who {
				case "guard":
					r.guardKills++
				case "kernel":
					r.kernelKills++
				default:
					r.other++
				}
			}
			r.holdWaits = arm.holdWaits.Load() - waitsBefore
			col.mu.Lock()
			r.react = append([]time.Duration(nil), col.react...)
			r.overshoot = append([]uint64(nil), col.overshoot...)
			col.mu.Unlock()
			rows = append(rows, r)
			fmt.Fprintf(os.Stderr, "%s %s: limit %d MiB, %d thread(s): guard %d, kernel %d\n", h.version, mech, lim, th, r.guardKills, r.kernelKills)
		}
	}
	close(stop)
	return rows, floor, <-done
}

// oneRun starts one hog in a new cgroup and says who killed it.
func oneRun(h hierarchy, rel string, limit uint64, threads int, col *collector, arm *armed) (string, error) {
	if err := arm.wait(0); err != nil { // the previous run's cgroup is let go
		return "", err
	}
	if err := h.mkLimited(rel, limit); err != nil {
		return "", err
	}
	defer removeTree(h.mount, rel)
	if err := arm.wait(1); err != nil {
		return "", err
	}
	hog := testenv.HogCommand(testenv.HogSpec{MiB: 0, Threads: threads})
	if err := testenv.StartIn(h.mount, rel, hog); err != nil {
		return "", err
	}
	errc := make(chan error, 1)
	go func() { errc <- hog.Wait() }()
	select {
	case <-errc:
	case <-time.After(60 * time.Second):
		_ = hog.Process.Kill()
		<-errc
		return "", fmt.Errorf("hog in %s not killed within 60s", rel)
	}
	time.Sleep(5 * time.Millisecond)
	kills, err := h.kernelKills(rel)
	if err != nil {
		return "", err
	}
	byGuard := false
	// The guard reports after it kills: give its event a moment.
	for deadline := time.Now().Add(time.Second); kills == 0 && !byGuard && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		col.mu.Lock()
		byGuard = col.killed[hog.Process.Pid]
		col.mu.Unlock()
	}
	switch {
	case kills > 0:
		return "kernel", nil
	case byGuard:
		return "guard", nil
	}
	ws := hog.ProcessState.Sys().(syscall.WaitStatus)
	return "other: " + ws.Signal().String(), nil
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p * float64(len(s)-1))
	return s[i]
}

func printTable(out io.Writer, h hierarchy, rows []row, cfg guard.Config, floor string) {
	lag := ""
	if h.version == "v1" { // as guard.New sets it from the notifier
		lag = fmt.Sprintf(" + %.1f MiB the kernel may signal late", float64(notify.V1Notifier{}.ThresholdLag())/(1<<20))
	}
	fmt.Fprintf(out, "\nPreemption on cgroup %s (%s), margins: ratio %.2f, min %d MiB%s, max %d MiB, policy process%s\n\n",
		h.version, kernelRelease(), cfg.MarginRatio, cfg.MinMargin>>20, lag, cfg.MaxMargin>>20, floor)
	fmt.Fprintln(out, "| mechanism | limit | threads | runs | guard kills | kernel kills | preemption | held at the limit | reaction p50 | reaction p99 | reaction max | overshoot p50 | overshoot max |")
	fmt.Fprintln(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	surface := ""
	if k := os.Getenv("OOMGUARD_OLDKERNEL"); k != "" {
		surface = " (" + k + " surface)"
	}
	for _, r := range rows {
		total := r.guardKills + r.kernelKills
		rate := 0.0
		if total > 0 {
			rate = 100 * float64(r.guardKills) / float64(total)
		}
		fmt.Fprintf(out, "| %s | %d MiB | %d | %d | %d | %d | %.0f%% | %d | %v | %v | %v | %s | %s |\n", r.mechanism+surface, r.limitMiB, r.threads, r.runs,
			r.guardKills, r.kernelKills, rate, r.holdWaits, us(pct(r.react, 0.5)), us(pct(r.react, 0.99)), us(pct(r.react, 1)),
			kib(pctU(r.overshoot, 0.5)), kib(pctU(r.overshoot, 1)))
	}
}

func pctU(v []uint64, p float64) uint64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]uint64(nil), v...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(p*float64(len(s)-1))]
}

func kib(b uint64) string { return fmt.Sprintf("%d KiB", b>>10) }

func us(d time.Duration) string { return fmt.Sprintf("%dus", d.Microseconds()) }

func kernelRelease() string {
	var u syscall.Utsname
	if syscall.Uname(&u) != nil {
		return "?"
	}
	var b strings.Builder
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b.WriteByte(byte(c))
	}
	return "Linux " + b.String()
}

// parseBytes reads a size such as 60Mi, 45MiB or 1048576.
func parseBytes(s string) (uint64, error) {
	mult := uint64(1)
	for _, u := range []struct {
		suffix string
		mult   uint64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}} {
		if t, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = t, u.mult
			break
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	return v * mult, err
}

func cpuTicks(pid int) uint64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	u, _ := strconv.ParseUint(f[11], 10, 64)
	s, _ := strconv.ParseUint(f[12], 10, 64)
	return u + s
}

func statusKB(pid int, key string) uint64 {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, key+":") {
			v, _ := strconv.ParseUint(strings.Fields(line)[1], 10, 64)
			return v
		}
	}
	return 0
}

// cleanUpOnSignal removes top (every process the bench started in it
// killed) if the bench is interrupted or terminated, and exits: a respawning
// workload's supervisor would otherwise live on in an unguarded cgroup.
// The returned function ends the watch.
func cleanUpOnSignal(root *cgroup.FS, top string) (stop func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-sigs:
			fmt.Fprintf(os.Stderr, "%v: removing %s\n", sig, top)
			removeTree(root, top)
			os.Exit(1)
		case <-done:
		}
	}()
	return func() { signal.Stop(sigs); close(done) }
}

// removeTree kills what the bench left in rel and removes it.
func removeTree(root *cgroup.FS, rel string) {
	var dirs []string
	_ = root.Walk(rel, func(r string) error { dirs = append(dirs, r); return nil })
	for i := 0; i < 50; i++ {
		pids, _ := root.Procs(rel, true)
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		for j := 0; j < 50 && root.Rmdir(dirs[i]) != nil && root.Exists(dirs[i]); j++ {
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(data))[:3], " ")
}

// idleCostInProcess guards n idle limited cgroups with the default v2
// mechanism in this process (the VM has no Go toolchain to build the
// binary with) and reports the CPU this process used and the samples of
// memory.current it took.
func idleCostInProcess(h hierarchy, top string, n int, dur time.Duration, out io.Writer) error {
	base := top + "/idle"
	if err := h.mkdir(base); err != nil {
		return err
	}
	defer removeTree(h.mount, base)
	for i := 0; i < n; i++ {
		if err := h.mkLimited(fmt.Sprintf("%s/c%d", base, i), 256<<20); err != nil {
			return err
		}
	}
	parts, err := h.parts(base, "poll+events")
	if err != nil {
		return err
	}
	defer parts.close()
	mem := parts.mem
	cfg := guard.DefaultConfig()
	cfg.Policy = guard.PolicyNoop
	g, err := guard.New(cfg, mem, parts.notifier, parts.killer, &collector{killed: map[int]bool{}}, nil)
	if err != nil {
		return err
	}
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- g.Run(stop) }()
	select {
	case <-g.Ready():
	case <-time.After(2 * time.Minute):
		close(stop)
		<-done
		return fmt.Errorf("%d cgroups not guarded after 2 minutes", n)
	}
	cpu0, samples0 := selfCPU(), parts.samples()
	time.Sleep(dur)
	cpu1, samples1 := selfCPU(), parts.samples()
	fds, _ := os.ReadDir("/proc/self/fd")
	close(stop)
	if err := <-done; err != nil {
		return err
	}
	fmt.Fprintf(out, "\nIdle cost of the guard over %d guarded cgroups at rest, 256 MiB limits (%v, in-process): CPU %.3f%%, %.0f samples of memory.current a second, %d open fds\n",
		n, dur, float64(cpu1-cpu0)/float64(dur)*100, float64(samples1-samples0)/dur.Seconds(), len(fds))
	return nil
}

// selfCPU is the CPU time this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// goEnv passes the Go runtime's settings on to the VM.
func goEnv() []string {
	var env []string
	for _, k := range []string{"GOGC", "GOMAXPROCS", "GODEBUG", "GOMEMLIMIT"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}
