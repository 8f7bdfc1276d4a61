package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/guard"
	"github.com/oom-guard/oom-guard/internal/testenv"
)

// The two rows of issue 12: every race, not one in a quiet cgroup.
//
// respawn: a prefork supervisor (perl) in one 64 MiB cgroup forks a worker
// that allocates 1 GiB at once and, as soon as it dies, the next, for a
// while: kills by the guard and by the kernel, reaction p50/p99.
//
// storm: n cgroups of 64 MiB, one growing process in each (this binary's
// hog), released at the same moment: kernel kills, pids the guard killed
// twice, reaction p50/p99/max, and the time until every one is dead.
//
// Both print the hold waits (armed): the races the guard lost to the
// limit and won only because the cgroup was held (--v1-hold-oom).

// raceCollector counts the guard's kills by victim.
type raceCollector struct {
	mu     sync.Mutex
	kills  map[int]int
	react  []time.Duration
	events int
}

func (c *raceCollector) Acted(a event.Action) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events++
	for _, p := range a.Killed {
		c.kills[p.Pid]++
	}
}

func (c *raceCollector) Counted(event.CounterKill) {}

func (c *raceCollector) observe(d time.Duration) {
	c.mu.Lock()
	c.react = append(c.react, d)
	c.mu.Unlock()
}

// raceGuard runs a process-policy guard over base until the returned stop.
func raceGuard(h hierarchy, base string) (*raceCollector, *armed, func() error, error) {
	parts, err := h.parts(base, "poll+events")
	if err != nil {
		return nil, nil, nil, err
	}
	cfg, removeState, err := killingConfig()
	if err != nil {
		parts.close()
		return nil, nil, nil, err
	}
	col := &raceCollector{kills: map[int]int{}}
	arm := &armed{}
	g, err := guard.New(cfg, parts.mem, parts.notifier, parts.killer, col, arm)
	if err != nil {
		parts.close()
		removeState()
		return nil, nil, nil, err
	}
	g.Observe = col.observe
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- g.Run(stop) }()
	return col, arm, func() error { close(stop); err := <-done; parts.close(); removeState(); return err }, nil
}

func respawnRow(h hierarchy, top string, d time.Duration, out io.Writer) error {
	perl, err := exec.LookPath("perl")
	if err != nil {
		return fmt.Errorf("respawn row: %w", err)
	}
	base := top + "/respawn"
	if err := h.mkdir(base); err != nil {
		return err
	}
	defer removeTree(h.mount, base)
	rel := base + "/pool"
	if err := h.mkLimited(rel, 64<<20); err != nil {
		return err
	}
	col, arm, stop, err := raceGuard(h, base)
	if err != nil {
		return err
	}
	if err := arm.wait(1); err != nil {
		_ = stop()
		return err
	}
	sup := exec.Command(perl, "-e", `while(1){ my $p=fork; if(!$p){ my $x = "a" x $ARGV[0]; exit } waitpid($p,0) }`, "1073741824")
	steal := testenv.StartSteal()
	if err := testenv.StartIn(h.mount, rel, sup); err != nil {
		_ = stop()
		return err
	}
	time.Sleep(d)
	alive := running(sup.Process.Pid)
	stolen := steal.Share()
	_ = sup.Process.Kill()
	_ = sup.Wait()
	time.Sleep(100 * time.Millisecond)
	kernel, err := h.kernelKills(rel)
	if err != nil {
		_ = stop()
		return err
	}
	if err := stop(); err != nil {
		return err
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	twice := 0
	for _, n := range col.kills {
		if n > 1 {
			twice++
		}
	}
	fmt.Fprintf(out, "\nRespawning workload on cgroup %s (%s): a prefork supervisor in one 64 MiB cgroup forks a worker allocating 1 GiB as soon as the last one dies, for %v (load average %s)\n\n",
		h.version, kernelRelease(), d, loadAvg())
	fmt.Fprintln(out, "| workers killed | by the guard | by the kernel | kernel share | pids killed twice | supervisor survived | reaction p50 | reaction p99 | reaction max | hold waits | CPU time stolen by the host |")
	fmt.Fprintln(out, "|---|---|---|---|---|---|---|---|---|---|---|")
	total := len(col.kills) + int(kernel)
	share := 0.0
	if total > 0 {
		share = 100 * float64(kernel) / float64(total)
	}
	fmt.Fprintf(out, "| %d | %d | %d | %.1f%% | %d | %v | %v | %v | %v | %d | %s |\n", total, len(col.kills), kernel, share, twice, alive,
		us(pct(col.react, 0.5)), us(pct(col.react, 0.99)), us(pct(col.react, 1)), arm.holdWaits.Load(), stolen)
	fmt.Fprintf(os.Stderr, "%s respawn: guard %d, kernel %d\n", h.version, len(col.kills), kernel)
	return nil
}

func stormRow(h hierarchy, top string, n int, out io.Writer) error {
	base := top + "/storm"
	if err := h.mkdir(base); err != nil {
		return err
	}
	defer removeTree(h.mount, base)
	var rels []string
	for i := 0; i < n; i++ {
		rel := fmt.Sprintf("%s/s%03d", base, i)
		if err := h.mkLimited(rel, 64<<20); err != nil {
			return err
		}
		rels = append(rels, rel)
	}
	col, arm, stop, err := raceGuard(h, base)
	if err != nil {
		return err
	}
	defer func() { _ = stop() }()
	if err := arm.wait(int64(n)); err != nil {
		return err
	}
	var hogs []*exec.Cmd
	var gates []*os.File
	defer func() { killAll(hogs) }() // hogs is nil once they all ended
	for _, rel := range rels {
		c, gate, err := gatedHog(h, rel)
		if err != nil {
			return err
		}
		hogs, gates = append(hogs, c), append(gates, gate)
	}
	start := time.Now()
	steal := testenv.StartSteal()
	for _, w := range gates {
		_, _ = w.Write([]byte{1})
		w.Close()
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var last time.Time
	for _, c := range hogs {
		wg.Add(1)
		go func(c *exec.Cmd) {
			defer wg.Done()
			_ = c.Wait()
			mu.Lock()
			last = time.Now()
			mu.Unlock()
		}(c)
	}
	wg.Wait()
	hogs = nil
	all := last.Sub(start)
	stolen := steal.Share()
	time.Sleep(200 * time.Millisecond)
	kernel := uint64(0)
	for _, rel := range rels {
		k, err := h.kernelKills(rel)
		if err != nil {
			return err
		}
		kernel += k
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	twice := 0
	for _, k := range col.kills {
		if k > 1 {
			twice++
		}
	}
	fmt.Fprintf(out, "\nStorm on cgroup %s (%s): %d cgroups of 64 MiB, one process growing in each, released at once (load average %s)\n\n",
		h.version, kernelRelease(), n, loadAvg())
	fmt.Fprintln(out, "| cgroups | guard kills | kernel kills | pids killed twice | reaction p50 | reaction p99 | reaction max | all dead after | hold waits | CPU time stolen by the host |")
	fmt.Fprintln(out, "|---|---|---|---|---|---|---|---|---|---|")
	fmt.Fprintf(out, "| %d | %d | %d | %d | %v | %v | %v | %v | %d | %s |\n", n, len(col.kills), kernel, twice,
		us(pct(col.react, 0.5)), us(pct(col.react, 0.99)), us(pct(col.react, 1)), all.Round(time.Millisecond), arm.holdWaits.Load(), stolen)
	fmt.Fprintf(os.Stderr, "%s storm: guard %d, kernel %d\n", h.version, len(col.kills), kernel)
	return nil
}

// running tells whether pid runs: not gone and not a zombie (which
// Signal(0) would take for alive).
func running(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(stat), ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] != 'Z' && stat[i+2] != 'X'
}
