package main

import (
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/guard"
	"github.com/oom-guard/oom-guard/internal/kmsg"
	"github.com/oom-guard/oom-guard/internal/reconcile"
	"github.com/oom-guard/oom-guard/internal/testenv"
)

// eventTimes records, per victim pid, when the kernel logged the kill and
// when the event left the guard's pipeline, both on CLOCK_MONOTONIC (the
// kernel log's clock).
type eventTimes struct {
	mu     sync.Mutex
	killed map[int]time.Duration
	left   map[int]time.Duration
	events chan int
}

func monotonic() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

func (e *eventTimes) Send(ev event.Event) {
	if ev.Reason != event.CgroupOOM || len(ev.Processes) == 0 {
		return
	}
	now := monotonic()
	e.mu.Lock()
	e.left[ev.Processes[0].Pid] = now
	e.mu.Unlock()
	e.events <- ev.Processes[0].Pid
}

func (e *eventTimes) kernel(k kmsg.Kill) {
	e.mu.Lock()
	e.killed[k.Pid] = k.Monotonic
	e.mu.Unlock()
}

// eventLatency lets the kernel OOM-kill a fast allocator n times under a
// noop guard with the kernel log reader and the reconciler, as the binary
// runs them, and reports the time from the kernel's kill (its log record)
// to the event leaving the pipeline (p50, p99).
func eventLatency(h hierarchy, top string, n int, out io.Writer) error {
	base := top + "/events"
	if err := h.mkdir(base); err != nil {
		return err
	}
	defer removeTree(h.mount, base)
	parts, err := h.parts(base, "poll+events")
	if err != nil {
		return err
	}
	defer parts.close()
	mem := parts.mem
	times := &eventTimes{killed: map[int]time.Duration{}, left: map[int]time.Duration{}, events: make(chan int, n)}
	rec := reconcile.New(reconcile.Config{MemRoot: h.mount.Root, Scope: mem.FS().Root}, times)
	defer rec.Stop()
	reader, err := kmsg.Open(kmsg.Config{OnKill: func(k kmsg.Kill) { times.kernel(k); rec.Kernel(k) }})
	if err != nil {
		return err
	}
	go func() { _ = reader.Run() }()
	defer reader.Close()
	cfg := guard.DefaultConfig()
	cfg.Policy = guard.PolicyNoop
	arm := &armed{}
	g, err := guard.New(cfg, mem, parts.notifier, parts.killer, rec, arm)
	if err != nil {
		return err
	}
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- g.Run(stop) }()
	defer func() { close(stop); <-done }()

	var lat []time.Duration
	for i := 0; i < n; i++ {
		d, err := kernelKillEvent(h, fmt.Sprintf("%s/k%d", base, i), times, arm)
		if err != nil {
			return fmt.Errorf("run %d: %w", i, err)
		}
		if d > 0 {
			lat = append(lat, d)
		}
	}
	fmt.Fprintf(out, "\nKernel OOM kill to event on cgroup %s (kernel log record of the kill to the reconciled event leaving the pipeline), %d kills, %d matched in the log:\n\n", h.version, n, len(lat))
	fmt.Fprintln(out, "| p50 | p99 | max |")
	fmt.Fprintln(out, "|---|---|---|")
	fmt.Fprintf(out, "| %v | %v | %v |\n", ms(pct(lat, 0.5)), ms(pct(lat, 0.99)), ms(pct(lat, 1)))
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond)) }

// kernelKillEvent has the kernel OOM-kill a hog in a new cgroup rel and
// returns the time from the kill to its event (0 if the kernel log did not
// time it). The cgroup stays until the event is out: a cgroup removed at
// once leaves its counters unread and the kill to the kernel log alone
// (reported when the reconciler's window ends).
func kernelKillEvent(h hierarchy, rel string, times *eventTimes, arm *armed) (time.Duration, error) {
	if err := arm.wait(0); err != nil {
		return 0, err
	}
	if err := h.mkLimited(rel, 64<<20); err != nil {
		return 0, err
	}
	defer removeTree(h.mount, rel)
	if err := arm.wait(1); err != nil {
		return 0, err
	}
	hog := testenv.HogCommand(testenv.HogSpec{})
	if err := testenv.StartIn(h.mount, rel, hog); err != nil {
		return 0, err
	}
	_ = hog.Wait()
	select {
	case pid := <-times.events:
		times.mu.Lock()
		defer times.mu.Unlock()
		if k, ok := times.killed[pid]; ok {
			return times.left[pid] - k, nil
		}
		return 0, nil
	case <-time.After(5 * time.Second):
		return 0, fmt.Errorf("no event for the kernel's kill of pid %d within 5s", hog.Process.Pid)
	}
}
