// Command preempt measures how often the guard beats the kernel's cgroup
// OOM killer and how fast it reacts, on this machine's real kernel (cgroup
// v1, as root). For each limit and number of allocating threads it runs a
// process that allocates and touches memory as fast as it can in a fresh
// cgroup, under a guard with the default margins and the process policy,
// and counts who killed it: the guard (its event) or the kernel (the
// cgroup's oom_kill counter). Reaction time is from the kernel's threshold
// notification (epoll wake-up) to the SIGKILL. Then it measures the guard
// binary's RSS and CPU with many idle guarded cgroups.
//
//	go run ./bench/preempt [-runs 20] [-limits 64,256,1024] [-threads 1,2] [-idle 1000]
//
// Everything it creates lives under /sys/fs/cgroup/memory/oomguard-bench-PID
// and is removed at the end; it kills only the processes it started.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/guard"
	"github.com/oom-guard/oom-guard/internal/kill"
	"github.com/oom-guard/oom-guard/internal/notify"
	"github.com/oom-guard/oom-guard/internal/testenv"
)

func main() {
	testenv.RunHogIfRequested()
	runs := flag.Int("runs", 20, "runs per limit and thread count")
	limits := flag.String("limits", "64,256,1024", "limits to test, MiB")
	threads := flag.String("threads", "1,2", "allocating threads to test")
	idle := flag.Int("idle", 1000, "idle guarded cgroups for the RSS/CPU measurement (0 skips it)")
	idleFor := flag.Duration("idle-for", 10*time.Second, "how long to measure the idle guard")
	guardBin := flag.String("guard-bin", "", "oom-guard binary for the idle measurement (default: build it)")
	eventRuns := flag.Int("event-runs", 20, "kernel OOM kills for the kill-to-event latency (0 skips it)")
	flag.IntVar(&rtPriority, "rt", guard.DefaultConfig().RealtimePriority, "SCHED_FIFO priority of the guard loop (0: normal scheduling)")
	flag.Parse()
	if err := run(*runs, ints(*limits), ints(*threads), *idle, *idleFor, *guardBin, *eventRuns); err != nil {
		fmt.Fprintln(os.Stderr, "preempt:", err)
		os.Exit(1)
	}
}

var rtPriority int

func ints(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if v, err := strconv.Atoi(strings.TrimSpace(f)); err == nil {
			out = append(out, v)
		}
	}
	return out
}

// collector is the guard's sink: it records each kill's victim pid.
type collector struct {
	mu     sync.Mutex
	killed map[int]bool
	react  []time.Duration
}

func (c *collector) Send(ev event.Event) {
	if ev.Reason != event.KillProcess {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range ev.Processes {
		c.killed[p.Pid] = true
	}
}

func (c *collector) observe(d time.Duration) {
	c.mu.Lock()
	c.react = append(c.react, d)
	c.mu.Unlock()
}

type row struct {
	limitMiB, threads, runs, guardKills, kernelKills, other int
	react                                                   []time.Duration
}

func run(runs int, limits, threads []int, idle int, idleFor time.Duration, guardBin string, eventRuns int) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root")
	}
	mem0, err := cgroup.Open(testenv.V1MemoryRoot)
	if err != nil || mem0.Version() != cgroup.VersionV1 {
		return fmt.Errorf("needs the cgroup v1 memory hierarchy at %s: %v", testenv.V1MemoryRoot, err)
	}
	top := fmt.Sprintf("/oomguard-bench-%d", os.Getpid())
	root := &cgroup.FS{Root: testenv.V1MemoryRoot}
	if err := root.Mkdir(top); err != nil {
		return err
	}
	defer removeTree(root, top)

	mem, err := cgroup.Open(root.Path(top, ""))
	if err != nil {
		return err
	}
	col := &collector{killed: map[int]bool{}}
	cfg := guard.DefaultConfig()
	cfg.Policy = guard.PolicyProcess
	cfg.RealtimePriority = rtPriority
	arm := &armed{}
	g, err := guard.New(cfg, mem, notify.V1Notifier{FS: mem.FS()}, kill.Killer{Mem: mem.FS(), Self: os.Getpid()}, col, arm)
	if err != nil {
		return err
	}
	g.Observe = col.observe
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- g.Run(stop) }()

	var rows []row
	for _, lim := range limits {
		for _, th := range threads {
			r := row{limitMiB: lim, threads: th, runs: runs}
			col.mu.Lock()
			col.react = nil
			col.mu.Unlock()
			for i := 0; i < runs; i++ {
				who, err := oneRun(root, fmt.Sprintf("%s/l%d-t%d-r%d", top, lim, th, i), uint64(lim)<<20, th, col, arm)
				if err != nil {
					close(stop)
					<-done
					return err
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
			col.mu.Lock()
			r.react = append([]time.Duration(nil), col.react...)
			col.mu.Unlock()
			rows = append(rows, r)
			fmt.Fprintf(os.Stderr, "limit %d MiB, %d thread(s): guard %d, kernel %d\n", lim, th, r.guardKills, r.kernelKills)
		}
	}
	close(stop)
	if err := <-done; err != nil {
		return err
	}
	printTable(rows, cfg)
	if eventRuns > 0 {
		if err := eventLatency(root, top, eventRuns); err != nil {
			return err
		}
	}
	if idle > 0 {
		return idleCost(root, top, idle, idleFor, guardBin)
	}
	return nil
}

// oneRun starts one hog in a new cgroup and says who killed it.
func oneRun(root *cgroup.FS, rel string, limit uint64, threads int, col *collector, arm *armed) (string, error) {
	if err := arm.wait(0); err != nil { // the previous run's cgroup is let go
		return "", err
	}
	if err := root.Mkdir(rel); err != nil {
		return "", err
	}
	defer removeTree(root, rel)
	if err := root.WriteFile(rel, "memory.limit_in_bytes", strconv.FormatUint(limit, 10)); err != nil {
		return "", err
	}
	if err := arm.wait(1); err != nil {
		return "", err
	}
	hog := testenv.HogCommand(testenv.HogSpec{MiB: 0, Threads: threads})
	if err := testenv.StartIn(root, rel, hog); err != nil {
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
	oc, err := root.ReadFile(rel, "memory.oom_control")
	if err != nil {
		return "", err
	}
	counters, err := cgroup.ParseFlatKeyed(strings.NewReader(string(oc)))
	if err != nil {
		return "", fmt.Errorf("%s: %w", root.Path(rel, "memory.oom_control"), err)
	}
	kernel := counters["oom_kill"] > 0
	byGuard := false
	// The guard reports after it kills: give its event a moment.
	for deadline := time.Now().Add(time.Second); !kernel && !byGuard && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		col.mu.Lock()
		byGuard = col.killed[hog.Process.Pid]
		col.mu.Unlock()
	}
	switch {
	case kernel:
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

func printTable(rows []row, cfg guard.Config) {
	fmt.Printf("\nPreemption on cgroup v1 (%s), margins: ratio %.2f, min %d MiB, max %d MiB, policy process, loop SCHED_FIFO priority %d, load average %s\n\n",
		kernelRelease(), cfg.MarginRatio, cfg.MinMargin>>20, cfg.MaxMargin>>20, cfg.RealtimePriority, loadAvg())
	fmt.Println("| limit | threads | runs | guard kills | kernel kills | preemption | reaction p50 | reaction p99 | reaction max |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		total := r.guardKills + r.kernelKills
		rate := 0.0
		if total > 0 {
			rate = 100 * float64(r.guardKills) / float64(total)
		}
		fmt.Printf("| %d MiB | %d | %d | %d | %d | %.0f%% | %v | %v | %v |\n", r.limitMiB, r.threads, r.runs,
			r.guardKills, r.kernelKills, rate, us(pct(r.react, 0.5)), us(pct(r.react, 0.99)), us(pct(r.react, 1)))
	}
}

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

// idleCost runs the real oom-guard binary over n idle limited cgroups and
// reports its resident memory and CPU use.
func idleCost(root *cgroup.FS, top string, n int, dur time.Duration, bin string) error {
	base := top + "/idle"
	if err := root.Mkdir(base); err != nil {
		return err
	}
	defer removeTree(root, base)
	for i := 0; i < n; i++ {
		rel := fmt.Sprintf("%s/c%d", base, i)
		if err := root.Mkdir(rel); err != nil {
			return err
		}
		if err := root.WriteFile(rel, "memory.limit_in_bytes", strconv.Itoa(256<<20)); err != nil {
			return err
		}
	}
	if bin == "" {
		dir, err := os.MkdirTemp("", "oomguard-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		bin = filepath.Join(dir, "oom-guard")
		build := exec.Command("go", "build", "-o", bin, "./cmd/oom-guard")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("build oom-guard: %v\n%s", err, out)
		}
	}
	cmd := exec.Command(bin, "--root="+root.Path(base, ""), "--policy=noop", "--webhook-url=", "--v=0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	started := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }()
	ready := make(chan time.Duration, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			fmt.Fprintln(os.Stderr, sc.Text())
			if strings.Contains(sc.Text(), "guarding ") {
				ready <- time.Since(started)
			}
		}
	}()
	var startup time.Duration
	select {
	case startup = <-ready:
	case <-time.After(2 * time.Minute):
		return fmt.Errorf("oom-guard not guarding %d cgroups after 2 minutes", n)
	}
	cpu0 := cpuTicks(cmd.Process.Pid)
	time.Sleep(dur)
	cpu1 := cpuTicks(cmd.Process.Pid)
	rss := statusKB(cmd.Process.Pid, "VmRSS")
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", cmd.Process.Pid))
	const hz = 100 // USER_HZ
	cpuPct := float64(cpu1-cpu0) / hz / dur.Seconds() * 100
	fmt.Printf("\nThe oom-guard binary over %d guarded cgroups: all guarded %v after start; then idle for %v: RSS %.1f MiB, CPU %.3f%%, %d open fds\n",
		n, startup.Round(time.Millisecond), dur, float64(rss)/1024, cpuPct, len(fds))
	return nil
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
