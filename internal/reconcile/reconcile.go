// Package reconcile is the one stage that says what happened. The guard
// loop states facts (an action, a kill its counters saw), the kernel log
// states its records; this stage alone turns them into events: it
// de-duplicates the kernel's kills seen by both (match.go), names the
// container and pod, tells the seed-003 case (a child killed while its
// container runs on), writes the message a person reads (message.go),
// counts every event once, and hands it to the sinks, which only encode.
// Where --kill-container-on-child-oom asks, it has the container stopped
// off its own goroutine (childstop.go), an action reported like the
// guard's.
package reconcile

import (
	"context"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/identity"
	"github.com/oom-guard/oom-guard/internal/kmsg"
)

// Sink takes finished events and must not block (report.Sink).
type Sink interface{ Send(event.Event) }

// Metrics counts the events as they go out: after de-duplication and
// classification, so each kill once, under its final reason.
type Metrics interface {
	Event(ev event.Event)
}

// Inspector tells what the container runtime knows (identity.Cached, which
// bounds every lookup in time).
type Inspector interface {
	Inspect(ctx context.Context, id identity.ID) (identity.Info, error)
}

// ContainerKiller kills the whole container of a cgroup (absolute path)
// and returns its processes that were killed.
type ContainerKiller func(cgroup string) ([]event.Process, error)

// Config configures a Reconciler.
type Config struct {
	Hostname string
	// MemRoot is the memory hierarchy's mount point: the kernel log names
	// cgroups relative to it.
	MemRoot string
	// Scope is the sub-tree the guard watches (--root). Kernel-log kills of
	// memory cgroups outside it are someone else's; system OOMs are
	// always reported.
	Scope string
	// Window is how long a kill from one source waits for the other.
	Window time.Duration
	// Inspector names containers and pods; nil: IDs from the path only.
	Inspector Inspector
	// Procs lists the processes still in a cgroup (absolute path): a
	// container whose cgroup has processes after the kill runs on.
	Procs func(cgroup string) ([]int, error)
	// KillOnChildOOM, if set, kills the container of every ChildOOM event
	// (--kill-container-on-child-oom), off the reporting path.
	KillOnChildOOM ContainerKiller
	// Metrics, if set, counts every event that goes out.
	Metrics Metrics
	// QueueSize bounds what waits to be reconciled; more is dropped, counted.
	QueueSize int
}

// DefaultWindow covers the guard's counter check (10 ms after the kernel's
// notification) and a kernel log reader that is a little behind.
const DefaultWindow = 300 * time.Millisecond

// Reconciler is the stage. Its inputs never block; one goroutine does the
// rest.
type Reconciler struct {
	cfg     Config
	next    Sink
	in      chan input
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	dropped atomic.Uint64

	// Owned by the run goroutine.
	match   *matcher
	stopper *childStopper
}

type input struct {
	action  *event.Action
	counted *event.CounterKill
	kill    *kmsg.Kill
}

// New starts a Reconciler that sends to next. Stop it with Stop.
func New(cfg Config, next Sink) *Reconciler {
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 1024
	}
	r := &Reconciler{cfg: cfg, next: next, in: make(chan input, cfg.QueueSize), stop: make(chan struct{}), done: make(chan struct{})}
	r.match = newMatcher(cfg)
	if cfg.KillOnChildOOM != nil {
		r.stopper = newChildStopper(cfg.KillOnChildOOM, r.scoped, &r.dropped)
	}
	go r.run()
	return r
}

// Acted takes an action of the guard's. It never blocks.
func (r *Reconciler) Acted(a event.Action) { r.offer(input{action: &a}) }

// Counted takes a kernel kill the guard's counters saw. It never blocks.
func (r *Reconciler) Counted(k event.CounterKill) { r.offer(input{counted: &k}) }

// Kernel takes a kill from the kernel log. It never blocks.
func (r *Reconciler) Kernel(k kmsg.Kill) { r.offer(input{kill: &k}) }

func (r *Reconciler) offer(in input) {
	select {
	case <-r.stop:
		r.dropped.Add(1)
		return
	default:
	}
	select {
	case r.in <- in:
	default:
		r.dropped.Add(1)
	}
}

// Dropped counts what a full queue or a stopped Reconciler turned away.
func (r *Reconciler) Dropped() uint64 { return r.dropped.Load() }

// Stop reports whatever still waits for its match, lets a container stop
// under way finish and report, and ends the goroutines.
func (r *Reconciler) Stop() {
	r.once.Do(func() { close(r.stop) })
	<-r.done
}

func (r *Reconciler) run() {
	defer close(r.done)
	tick := time.NewTicker(r.cfg.Window / 4)
	defer tick.Stop()
	for {
		select {
		case in := <-r.in:
			r.take(in, time.Now())
		case a := <-r.stopper.results():
			r.out(fromAction(a), &a)
		case now := <-tick.C:
			r.outAll(r.match.expire(now))
		case <-r.stop:
			r.drain()
			return
		}
	}
}

// drain reports what is queued and what still waits, then what the
// container stops it asked for did.
func (r *Reconciler) drain() {
	for {
		select {
		case in := <-r.in:
			r.take(in, time.Now())
			continue
		default:
		}
		break
	}
	r.outAll(r.match.expire(time.Now().Add(24 * time.Hour)))
	for a := range r.stopper.finish() {
		r.out(fromAction(a), &a)
	}
}

func (r *Reconciler) take(in input, now time.Time) {
	switch {
	case in.action != nil:
		r.out(fromAction(*in.action), in.action)
	case in.counted != nil:
		r.outAll(r.match.counted(fromCounter(*in.counted), now))
	case in.kill != nil:
		r.outAll(r.match.kernel(*in.kill, now))
	}
}

func (r *Reconciler) outAll(evs []event.Event) {
	for _, ev := range evs {
		r.out(ev, nil)
	}
}

// out finishes an event (identity, classification, message), counts it
// and sends it on; a ChildOOM may ask for its container's stop. a is the
// action the event reports, nil for a kernel kill.
func (r *Reconciler) out(ev event.Event, a *event.Action) {
	if ev.Hostname == "" {
		ev.Hostname = r.cfg.Hostname
	}
	info := r.enrich(&ev)
	// A memory.oom.group kill took the whole container, even when the
	// counters could name one process of it.
	if ev.Reason == event.CgroupOOM && ev.OOMGroup == "" && ev.ContainerID != "" && r.childOfRunning(&ev, info) {
		ev.Reason = event.ChildOOM
	}
	ev.Message = describe(ev, a)
	if r.cfg.Metrics != nil {
		r.cfg.Metrics.Event(ev)
	}
	r.next.Send(ev)
	if ev.Reason == event.ChildOOM {
		r.stopper.ask(ev)
	}
}

// fromAction is the event of an action: the seed's fields, and what the
// guard knew.
func fromAction(a event.Action) event.Event {
	ev := event.Event{
		Timestamp: a.At, OOMCgroup: a.OOMCgroup, ProcCgroup: a.ProcCgroup,
		Threshold: a.Threshold, Usage: a.Usage, Limit: a.Limit, Stats: a.Stats, Policy: a.Policy,
		Reason: a.Reason, Processes: a.Killed, Reaction: a.Reaction, OOMGroup: a.OOMGroup,
	}
	ev.Killed = event.KilledField(ev.Processes)
	return ev
}

// fromCounter is the event of a counter kill, before any kernel-log match.
func fromCounter(k event.CounterKill) event.Event {
	ev := event.Event{
		Timestamp: k.At, OOMCgroup: k.OOMCgroup, ProcCgroup: k.ProcCgroup,
		Threshold: k.Threshold, Usage: k.Usage, Limit: k.Limit, Stats: k.Stats, Policy: "Kernel", Reason: event.CgroupOOM,
		Processes: k.Victims, OOMGroup: k.OOMGroup,
	}
	ev.Killed = event.KilledField(ev.Processes)
	return ev
}

// enrich names the event's container and pod: from the path, then from
// the runtime, whose answer it also returns.
func (r *Reconciler) enrich(ev *event.Event) identity.Info {
	id, ok := identity.FromPath(ev.ProcCgroup)
	if !ok || id.ContainerID == "" && id.PodUID == "" {
		return identity.Info{}
	}
	ev.Identity = event.Identity{Runtime: id.Runtime, ContainerID: id.ContainerID, PodUID: id.PodUID}
	if r.cfg.Inspector == nil {
		return identity.Info{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), inspectBudget)
	defer cancel()
	info, err := r.cfg.Inspector.Inspect(ctx, id)
	if err != nil {
		klog.V(3).Infof("cgroup %s: runtime does not name it: %v", ev.ProcCgroup, err)
		return identity.Info{}
	}
	ev.Identity = info.Identity.Or(ev.Identity)
	return info
}

// inspectBudget is how long an event waits for the runtime to name its
// container and pod (off the kill path). Seconds, not one: on a busy
// cgroup v2 node, containerd took longer than one second to answer for a
// container whose memory.oom.group kill it was handling, and the Event
// went on the Node for want of the pod's name.
const inspectBudget = 5 * time.Second

// childOfRunning: the victim was not the container's init (its pid in its
// own namespace was not 1, or the runtime names another init) and the
// container still has processes. That is the kill Kubernetes never shows.
func (r *Reconciler) childOfRunning(ev *event.Event, info identity.Info) bool {
	if len(ev.Processes) != 1 || ev.Processes[0].Pid <= 0 {
		return false
	}
	victim := ev.Processes[0]
	var notInit bool
	switch {
	case victim.PidInNS > 0:
		notInit = victim.PidInNS != 1
	case info.InitPid > 0:
		notInit = victim.Pid != info.InitPid
	default:
		return false // nobody can tell
	}
	if !notInit {
		return false
	}
	if r.cfg.Procs != nil {
		pids, err := r.cfg.Procs(ev.ProcCgroup)
		return err == nil && len(pids) > 0
	}
	return info.Running
}

// scoped tells whether an absolute cgroup path is in the guarded sub-tree.
func (r *Reconciler) scoped(p string) bool { return inScope(r.cfg.Scope, p) }

func inScope(scope, p string) bool {
	scope = strings.TrimSuffix(scope, "/")
	return scope == "" || p == scope || strings.HasPrefix(p, scope+"/")
}

// absPath turns a cgroup path from the kernel log into an absolute path.
func absPath(memRoot, kernelPath string) string {
	if kernelPath == "" {
		return ""
	}
	return path.Join(memRoot, kernelPath)
}
