package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/oom-guard/oom-guard/internal/guard"
)

// startupRows times the guard's start over n limited (256 MiB) cgroups, for
// each n and each number of registrations run at once: from Run to Ready,
// every cgroup's thresholds registered. On v1 each threshold costs the
// kernel a synchronize_rcu() (register.go), and grace periods waited for
// at once overlap.
func startupRows(h hierarchy, top string, ns, registrars []int, out io.Writer) error {
	type result struct {
		n, registrars int
		ready         time.Duration
		fds           int
	}
	var rows []result
	for _, n := range ns {
		base := fmt.Sprintf("%s/startup-%d", top, n)
		if err := h.mkdir(base); err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			if err := h.mkLimited(fmt.Sprintf("%s/c%05d", base, i), 256<<20); err != nil {
				removeTree(h.mount, base)
				return err
			}
		}
		for _, r := range registrars {
			ready, fds, err := startOnce(h, base, r)
			if err != nil {
				removeTree(h.mount, base)
				return err
			}
			rows = append(rows, result{n, r, ready, fds})
			fmt.Fprintf(os.Stderr, "startup: %d cgroups, %d registrars: ready %v\n", n, r, ready)
		}
		removeTree(h.mount, base)
	}
	fmt.Fprintf(out, "\nStart-up on cgroup %s (%s): limited cgroups (256 MiB) under a test root, the guard in this process (load average %s)\n\n", h.version, kernelRelease(), loadAvg())
	fmt.Fprintln(out, "| limited cgroups | registrations at once | all guarded after | rate | open fds |")
	fmt.Fprintln(out, "|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Fprintf(out, "| %d | %d | %v | %.0f/s | %d |\n", r.n, r.registrars, r.ready.Round(time.Millisecond), float64(r.n)/r.ready.Seconds(), r.fds)
	}
	return nil
}

// startOnce runs a guard over base until it is ready, and stops it.
func startOnce(h hierarchy, base string, registrars int) (time.Duration, int, error) {
	parts, err := h.parts(base, "poll+events")
	if err != nil {
		return 0, 0, err
	}
	defer parts.close()
	cfg := guard.DefaultConfig()
	cfg.Policy = guard.PolicyNoop
	cfg.Registrars = registrars
	g, err := guard.New(cfg, parts.mem, parts.notifier, parts.killer, &collector{killed: map[int]bool{}}, nil)
	if err != nil {
		return 0, 0, err
	}
	stop := make(chan struct{})
	done := make(chan error, 1)
	started := time.Now()
	go func() { done <- g.Run(stop) }()
	var ready time.Duration
	select {
	case <-g.Ready():
		ready = time.Since(started)
	case <-time.After(2 * time.Minute):
		err = fmt.Errorf("not guarded after 2 minutes")
	}
	fds, _ := os.ReadDir("/proc/self/fd")
	close(stop)
	if e := <-done; err == nil {
		err = e
	}
	return ready, len(fds), err
}
