// Command oom-guard keeps memory cgroups out of the kernel's cgroup OOM
// killer and reports every OOM. This file only wires the parts together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/asynclog"
	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/guard"
	"github.com/oom-guard/oom-guard/internal/identity"
	"github.com/oom-guard/oom-guard/internal/kernel"
	"github.com/oom-guard/oom-guard/internal/kill"
	"github.com/oom-guard/oom-guard/internal/kmsg"
	"github.com/oom-guard/oom-guard/internal/notify"
	"github.com/oom-guard/oom-guard/internal/reconcile"
	"github.com/oom-guard/oom-guard/internal/report"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// run returns the exit status: 0 after a clean stop, 1 on a runtime
// failure, 2 on a bad command line.
func run(args []string, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "oom-guard: %v\n", err)
		return 2
	}
	mem, err := cgroup.Open(o.root)
	if err != nil {
		fmt.Fprintf(stderr, "oom-guard: --root: %v\n", err)
		return 2
	}
	defer klog.Flush()
	if logs := asynclog.Klog(o.klogFlags, 4096); logs != nil {
		defer logs.Close(2 * time.Second)
	}
	if wantsKeeper(o, mem) {
		return keep(args, o.guard.StateFile, mem)
	}
	if err := serve(o, mem); err != nil {
		klog.Errorf("%v", err)
		return 1
	}
	return 0
}

func serve(o *options, mem cgroup.Memory) error {
	logFileLimit()
	nice(o.nice)
	realtime(o.rtOthers)
	metrics := report.NewMetrics()
	reportKernel(mem, metrics)
	sinks := []report.Sink{report.NewLog()}
	var webhook *report.Webhook
	if o.webhook != nil {
		webhook = report.NewWebhook(o.webhook, report.WebhookOptions{}, metrics)
		sinks = append(sinks, webhook)
	}
	kubeEvents, err := newKubeEvents(o, metrics)
	if err != nil {
		return err
	}
	if kubeEvents != nil {
		sinks = append(sinks, kubeEvents)
	}
	rt := newRuntimes(o)
	notifier, killer, err := kernelParts(mem, o.chargingCPUs, rt.stoppers, o.runtimeTimeout)
	if err != nil {
		return err
	}
	rec := reconcile.New(reconcile.Config{
		Hostname: o.hostname, MemRoot: memRoot(mem), Scope: mem.FS().Root,
		Inspector: rt.inspector, Procs: procsOf(mem), Metrics: metrics,
		KillOnChildOOM: childOOMKiller(o, mem, killer),
	}, report.Fanout(sinks...))
	metrics.CountDropped("reconcile", rec.Dropped)
	g, err := guard.New(o.guard, mem, notifier, killer, rec, metrics)
	if err != nil {
		rec.Stop()
		return err
	}
	var srv *report.Server
	if o.port > 0 {
		srv = report.NewServer(":"+strconv.Itoa(o.port), metrics, g.Healthy)
		if err := srv.Start(); err != nil {
			rec.Stop()
			return fmt.Errorf("--port %d: %w", o.port, err)
		}
	}
	stopKmsg := readKernelLog(o.kmsgPath, o.kmsgFromBoot, rec)

	stop := make(chan struct{})
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sig
		klog.Infof("received %v", s)
		close(stop)
	}()
	ran := make(chan struct{})
	waitHeap := returnHeap(ran)
	runErr := g.Run(stop)
	close(ran)
	waitHeap()

	stopKmsg()
	rec.Stop()
	rt.close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if srv != nil {
		_ = srv.Shutdown(ctx)
	}
	if webhook != nil {
		webhook.Stop(ctx)
	}
	if kubeEvents != nil {
		kubeEvents.Stop(ctx)
	}
	return runErr
}

// reportKernel says, in one log line and in oomguard_kernel_feature, which
// of the features the guard uses this kernel has, and the fallback in use
// for each it lacks; permanent kill failures are counted from here on.
func reportKernel(mem cgroup.Memory, metrics *report.Metrics) {
	features := kernel.Detect(mem.FS().Root, mem.Version() == cgroup.VersionV2)
	metrics.KernelFeatures(features)
	kill.SetPermanentFailureHook(metrics.KillFailure)
	line := kernel.Summary(features)
	for _, f := range features {
		if !f.Present {
			klog.Warning(line)
			return
		}
	}
	klog.Info(line)
}

// kernelParts picks the notification and kill mechanisms for the hierarchy.
func kernelParts(mem cgroup.Memory, chargingCPUs int, stoppers []identity.Stopper, timeout time.Duration) (guard.Notifier, kill.ViaRuntime, error) {
	switch mem.Version() {
	case cgroup.VersionV1:
		freezer, err := cgroup.V1Sibling(mem.FS().Root, "freezer")
		if err != nil {
			klog.Warningf("no v1 freezer (%v): the container policy kills without freezing first", err)
			freezer = nil
		}
		k := kill.Killer{Mem: mem.FS(), Freezer: freezer, Self: os.Getpid()}
		n := notify.V1Notifier{FS: mem.FS(), ChargingCPUs: chargingCPUs}
		klog.Infof("cgroup v1 on %s: margins at least --min-margin plus %s, how late the kernel may signal a threshold with %d CPUs charging a cgroup (--v1-charging-cpus)",
			mem.FS().Root, fmt.Sprintf("%.2fMiB", float64(n.ThresholdLag())/(1<<20)), chargingCPUs)
		return n, kill.ViaRuntime{Killer: k, Stoppers: stoppers, Timeout: timeout}, nil
	case cgroup.VersionV2:
		// v2 has no usage thresholds: the notifier samples memory.current
		// on a schedule fitted to how fast this machine can fill memory
		// (measured now), and reacts to memory.events at once.
		n, err := notify.NewV2Notifier(mem.FS(), notify.DefaultV2Options())
		if err != nil {
			return nil, kill.ViaRuntime{}, fmt.Errorf("cgroup v2 on %s: %w", mem.FS().Root, err)
		}
		klog.Infof("cgroup v2 on %s: sampling usage for an assumed growth of at least %.0f MiB/s", mem.FS().Root, n.GrowthFloor()/(1<<20))
		k := kill.Killer{Mem: mem.FS(), Unified: true, Self: os.Getpid()}
		return n, kill.ViaRuntime{Killer: k, Stoppers: stoppers, Timeout: timeout}, nil
	default:
		return nil, kill.ViaRuntime{}, fmt.Errorf("cgroup %s on %s is not supported", mem.Version(), mem.FS().Root)
	}
}

// runtimes are the container runtimes the guard may ask for names and stops.
type runtimes struct {
	inspector reconcile.Inspector
	stoppers  []identity.Stopper
	close     func()
}

func newRuntimes(o *options) runtimes {
	var resolvers []identity.Resolver
	var closers []func() error
	rt := runtimes{close: func() {}}
	if o.dockerSocket != "" {
		d := identity.NewDocker(o.dockerSocket)
		resolvers, rt.stoppers, closers = append(resolvers, d), append(rt.stoppers, d), append(closers, d.Close)
	}
	for _, s := range o.criSockets {
		c := identity.NewCRI(s)
		resolvers, rt.stoppers, closers = append(resolvers, c), append(rt.stoppers, c), append(closers, c.Close)
		// Off the start-up path: an absent runtime costs nothing but this.
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := c.Warm(ctx); err != nil {
				klog.V(2).Infof("runtime %s: %v", s, err)
			}
		}()
	}
	if len(resolvers) == 0 {
		return rt
	}
	cached := identity.NewCached(0, 0, resolvers...)
	// The names are for the reports, off the kill path: a lookup gets at
	// least 2 s (a stop through the runtime still gets --runtime-timeout-ms).
	cached.Timeout = max(o.runtimeTimeout, 2*time.Second)
	rt.inspector = cached
	rt.close = func() {
		for _, c := range closers {
			_ = c()
		}
	}
	return rt
}

// memRoot is the mount point of the hierarchy --root is in: the kernel log
// names cgroups relative to it.
func memRoot(mem cgroup.Memory) string {
	if p, err := cgroup.DefaultMemoryRoot(); err == nil {
		return p
	}
	return mem.FS().Root
}

// procsOf lists the processes in a cgroup given by absolute path.
func procsOf(mem cgroup.Memory) func(string) ([]int, error) {
	fs := &cgroup.FS{Root: memRoot(mem)}
	return func(abs string) ([]int, error) {
		rel, ok := fs.Rel(abs)
		if !ok {
			return nil, fmt.Errorf("cgroup %s: outside %s", abs, fs.Root)
		}
		return fs.Procs(rel, true)
	}
}

// childOOMKiller is --kill-container-on-child-oom: the container the kernel
// took a child from is killed whole, through its runtime where one has it.
func childOOMKiller(o *options, mem cgroup.Memory, killer kill.ViaRuntime) reconcile.ContainerKiller {
	if !o.killContainerOnChildOOM {
		return nil
	}
	fs := mem.FS()
	return func(abs string) ([]event.Process, error) {
		rel, ok := fs.Rel(abs)
		if !ok {
			return nil, fmt.Errorf("cgroup %s: outside %s", abs, fs.Root)
		}
		killed, _, err := killer.KillContainer(rel)
		ps := make([]event.Process, 0, len(killed))
		for _, k := range killed {
			ps = append(ps, k.Process(fs.Path(k.Cgroup, "")))
		}
		return ps, err
	}
}

// readKernelLog follows the kernel log for OOM reports. Without it the
// cgroup counters still report every kill in the guarded hierarchy.
func readKernelLog(path string, fromBoot bool, rec *reconcile.Reconciler) (stop func()) {
	if path == "" {
		return func() {}
	}
	r, err := kmsg.Open(kmsg.Config{Path: path, FromBoot: fromBoot, OnKill: rec.Kernel, OnLoss: func(l kmsg.Loss) {
		klog.Warningf("kernel log %s: %d record(s) lost (overrun %v): the cgroup counters still count every kill", path, l.Records, l.Overrun)
	}})
	if err != nil {
		klog.Warningf("kernel log: %v: OOM kills are reported from the cgroup counters only (no system OOMs)", err)
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := r.Run(); err != nil && !errors.Is(err, kmsg.ErrClosed) {
			klog.Errorf("kernel log %s: %v", path, err)
		}
	}()
	return func() {
		_ = r.Close()
		<-done
	}
}

// nice puts every thread of the guard at nice n (guard.NiceProcess says
// why); the loop's own thread then takes SCHED_FIFO (--rt-priority).
// Refused (no CAP_SYS_NICE), the guard runs on and says so.
func nice(n int) {
	if n == 0 {
		return
	}
	if err := guard.NiceProcess(n); err != nil {
		klog.Warningf("%v: the guard's threads run at their inherited priority; on a busy node a garbage collection may hold its loop for milliseconds", err)
		return
	}
	klog.V(1).Infof("threads at nice %d", n)
}

// realtime puts every thread of the guard under SCHED_RR at prio
// (guard.RealtimeProcess says why); the loop's own thread then takes
// SCHED_FIFO above it. Refused (no CAP_SYS_NICE, or a container's cgroup
// without a real-time budget), the threads keep their nice value.
func realtime(prio int) {
	if prio == 0 {
		return
	}
	if err := guard.RealtimeProcess(prio); err != nil {
		klog.Warningf("SCHED_RR %d for the guard's threads: %v; they run at their nice value, and on a busy node the Go runtime may hold the loop for milliseconds", prio, err)
		return
	}
	klog.V(1).Infof("threads at SCHED_RR %d", prio)
}

// logFileLimit raises the soft RLIMIT_NOFILE to the hard limit and says
// both: each guarded cgroup holds two files (v1: its eventfds; three more
// while it is near its limit), and where they run out the guard guards
// what it can and retries the rest (oomguard_unguarded_cgroups). The Go runtime raises the soft
// limit at start already (and puts the original back for children); this
// does it where it did not, and says so.
func logFileLimit() {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		klog.Warningf("RLIMIT_NOFILE: %v", err)
		return
	}
	if lim.Cur < lim.Max {
		soft := lim.Cur
		lim.Cur = lim.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			klog.Warningf("open files: soft limit %d, hard limit %d: raising the soft limit: %v", soft, lim.Max, err)
			return
		}
		klog.Infof("open files: soft limit raised from %d to the hard limit %d", soft, lim.Max)
		return
	}
	klog.Infof("open files: soft limit %d, hard limit %d (the soft one raised to the hard one at start)", lim.Cur, lim.Max)
}
