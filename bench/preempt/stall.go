package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/oom-guard/oom-guard/internal/guard"
	"github.com/oom-guard/oom-guard/internal/testenv"
)

// The loop during inotify resets (issue 13): n known cgroups under a test
// root, one in ten limited (256 MiB) and guarded, the rest unlimited, as on
// a node. The guard (in this process) re-creates its inotify watches on
// demand (ResetInotifyNow, what --inotifyResetSeconds does on its timer),
// and its own measure of its longest busy turn (TakeLoopBusyMax, the
// oomguard_loop_busy_seconds histogram's source) is read: at rest, and in
// the seconds after each reset (the re-watch and the walk that follows).
// Then races, each started so that its crossing falls right after a reset
// began: who kills, the guard or the kernel.

// stallResets is how many resets are timed.
const stallResets = 5

// stallRow measures the loop over n known cgroups; runs races per limit.
func stallRow(h hierarchy, top string, n, runs int, out io.Writer) error {
	if h.version != "v1" {
		return nil // the v2 guard's registrations and resets are the same code; the VM is too small for 10,000 cgroups
	}
	base := top + "/stall"
	if err := h.mkdir(base); err != nil {
		return err
	}
	defer removeTree(h.mount, base)
	limited := max(n/10, 1)
	made := time.Now()
	for i := 0; i < n; i++ {
		rel := fmt.Sprintf("%s/c%05d", base, i)
		var err error
		if i < limited {
			err = h.mkLimited(rel, 256<<20)
		} else {
			err = h.mkdir(rel)
		}
		if err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "reset stall: %d cgroups made in %v\n", n, time.Since(made).Round(time.Millisecond))
	parts, err := h.parts(base, "")
	if err != nil {
		return err
	}
	defer parts.close()
	cfg, removeState, err := killingConfig()
	if err != nil {
		return err
	}
	defer removeState()
	col := &collector{killed: map[int]bool{}}
	arm := &armed{}
	g, err := guard.New(cfg, parts.mem, parts.notifier, parts.killer, col, arm)
	if err != nil {
		return err
	}
	g.Observe = col.observe
	stop := make(chan struct{})
	done := make(chan error, 1)
	started := time.Now()
	go func() { done <- g.Run(stop) }()
	defer func() { close(stop); <-done }()
	select {
	case <-g.Ready():
	case <-time.After(2 * time.Minute):
		return fmt.Errorf("reset stall: %d cgroups not guarded after 2 minutes", limited)
	}
	ready := time.Since(started)
	time.Sleep(time.Second)
	g.TakeLoopBusyMax()
	time.Sleep(2 * time.Second)
	idle := g.TakeLoopBusyMax()
	var stalls []time.Duration
	for i := 0; i < stallResets; i++ {
		g.ResetInotifyNow()
		time.Sleep(3 * time.Second) // the re-watch, then the walk
		stalls = append(stalls, g.TakeLoopBusyMax())
	}
	fmt.Fprintf(os.Stderr, "reset stall: ready %v, idle %v, resets %v\n", ready, idle, stalls)
	// The same races without a reset first: what the machine's load
	// alone costs.
	type key struct {
		reset bool
		limit int
	}
	won, waited := map[key]int{}, map[key]int{}
	var raceStall time.Duration
	steal := testenv.StartSteal() // a lost race on a quiet guest is most often a virtual CPU the host did not run
	for _, reset := range []bool{false, true} {
		for _, lim := range []int{64, 1024} {
			for i := 0; i < runs; i++ {
				rel := fmt.Sprintf("%s/race-%v-l%d-r%d", base, reset, lim, i)
				raceSteal := testenv.StartSteal()
				waitsBefore := arm.holdWaits.Load()
				who, err := raceDuringReset(h, g, rel, uint64(lim)<<20, reset, int64(limited), col, arm)
				if err != nil {
					return err
				}
				if arm.holdWaits.Load() > waitsBefore {
					waited[key{reset, lim}]++
					fmt.Fprintf(os.Stderr, "reset stall: race %d MiB #%d (reset %v): the hog waited at the limit for the guard's kill, host steal %s during it\n", lim, i, reset, raceSteal.Share())
				}
				if reset {
					raceStall = max(raceStall, g.TakeLoopBusyMax())
				}
				if who == "guard" {
					won[key{reset, lim}]++
				} else {
					fmt.Fprintf(os.Stderr, "reset stall: race %d MiB #%d (reset %v): %s, host steal %s during it\n", lim, i, reset, who, raceSteal.Share())
				}
			}
		}
	}
	stolen := steal.Share()
	sort.Slice(stalls, func(i, j int) bool { return stalls[i] < stalls[j] })
	fmt.Fprintf(out, "\nThe loop during inotify resets on cgroup %s (%s): %d known cgroups, %d of them limited (256 MiB) and guarded; the guard's own longest busy turn (load average %s)\n\n",
		h.version, kernelRelease(), n, limited, loadAvg())
	fmt.Fprintln(out, "| known | guarded | ready after | longest turn at rest | longest turn after a reset (median, max of 5) | races won, no reset: 64 MiB | 1 GiB | races won, started during a reset: 64 MiB | 1 GiB | of the races won, held at the limit (no reset; during a reset) | longest turn in those races | reaction p50 | reaction max | host steal in the races |")
	fmt.Fprintln(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	fmt.Fprintf(out, "| %d | %d | %v | %s | %s, %s | %d/%d | %d/%d | %d/%d | %d/%d | %d; %d | %s | %v | %v | %s |\n", n, limited, ready.Round(time.Millisecond), ms(idle),
		ms(stalls[len(stalls)/2]), ms(stalls[len(stalls)-1]), won[key{false, 64}], runs, won[key{false, 1024}], runs,
		won[key{true, 64}], runs, won[key{true, 1024}], runs,
		waited[key{false, 64}]+waited[key{false, 1024}], waited[key{true, 64}]+waited[key{true, 1024}],
		ms(raceStall), us(pct(col.react, 0.5)), us(pct(col.react, 1)), stolen)
	return nil
}

// raceDuringReset starts a hog in a new cgroup of limit bytes and, with
// reset, when its usage is a few tens of milliseconds of allocation below
// the threshold, resets the guard's inotify watches: the crossing comes
// while the reset is under way. It says who killed the hog.
func raceDuringReset(h hierarchy, g *guard.Guard, rel string, limit uint64, reset bool, guarded int64, col *collector, arm *armed) (string, error) {
	// The last race's cgroup let go of first: while it still counts,
	// guarded+1 below would not wait for this one's registration, and the
	// race would start unguarded (a reset's walk can take seconds to see
	// a removal).
	if err := arm.wait(guarded); err != nil {
		return "", err
	}
	if err := h.mkLimited(rel, limit); err != nil {
		return "", err
	}
	defer removeTree(h.mount, rel)
	if err := arm.wait(guarded + 1); err != nil {
		return "", err
	}
	hog := testenv.HogCommand(testenv.HogSpec{MiB: 0})
	if err := testenv.StartIn(h.mount, rel, hog); err != nil {
		return "", err
	}
	exited := make(chan struct{})
	var wg sync.WaitGroup
	if reset {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resetNear(h, g, rel, limit-min(limit/2, 96<<20), exited)
		}()
	}
	errc := make(chan error, 1)
	go func() { errc <- hog.Wait() }()
	select {
	case <-errc:
	case <-time.After(60 * time.Second):
		_ = hog.Process.Kill()
		<-errc
	}
	close(exited)
	wg.Wait()
	time.Sleep(5 * time.Millisecond)
	kills, err := h.kernelKills(rel)
	if err != nil {
		return "", err
	}
	byGuard := false
	for deadline := time.Now().Add(time.Second); kills == 0 && !byGuard && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		col.mu.Lock()
		byGuard = col.killed[hog.Process.Pid]
		col.mu.Unlock()
	}
	if reset {
		time.Sleep(2500 * time.Millisecond) // the reset's walk ends before the next race
	}
	switch {
	case kills > 0:
		return "kernel", nil
	case byGuard:
		return "guard", nil
	}
	return "other: " + hog.ProcessState.String(), nil
}

// resetNear resets the guard's inotify watches once rel's usage reaches
// at bytes (or the hog has exited).
func resetNear(h hierarchy, g *guard.Guard, rel string, at uint64, exited <-chan struct{}) {
	for {
		select {
		case <-exited:
			return
		default:
		}
		data, err := h.mount.ReadFile(rel, "memory.usage_in_bytes")
		if err != nil {
			return
		}
		if u, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64); err == nil && u >= at {
			g.ResetInotifyNow()
			return
		}
	}
}
