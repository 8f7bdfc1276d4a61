// Package reconcile turns the two views of a kernel OOM kill into one event
// per kill, and completes every event's identity off the kill path.
//
// The cgroup counters (seen by the guard loop) never miss a kill but tell
// little; the kernel log names the victim and its memory at death but is
// rate-limited and can overrun. So a kill from either source waits a short
// window for the other: matched, it is reported once with the richest
// details of both; unmatched, it is reported with what its own source gave.
// Then the cgroup path and the container runtime say which container and pod
// it was, and whether it was the seed-003 case: a child process killed while
// its container runs on.
package reconcile

import (
	"context"
	"fmt"
	"path"
	"slices"
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

// Inspector tells what the container runtime knows (identity.Cached, which
// bounds every lookup in time).
type Inspector interface {
	Inspect(ctx context.Context, id identity.ID) (identity.Info, error)
}

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
	// OnChildOOM, if set, is called (on the reconciler's goroutine) for
	// every ChildOOM event, before it is sent on.
	OnChildOOM func(event.Event)
	// QueueSize bounds what waits to be reconciled; more is dropped, counted.
	QueueSize int
}

// DefaultWindow covers the guard's counter check (10 ms after the kernel's
// notification) and a kernel log reader that is a little behind.
const DefaultWindow = 300 * time.Millisecond

// Reconciler matches kernel kills from the cgroup counters (Send) with
// those from the kernel log (Kernel) and passes every event on, enriched.
type Reconciler struct {
	cfg     Config
	next    Sink
	in      chan input
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	dropped atomic.Uint64

	// Owned by the run goroutine.
	waitingEvents []waiting
	waitingKills  []waiting
	// globalKills holds, per victim cgroup (absolute path), the pids of
	// the system OOM kills the kernel log reported there. The kernel
	// charges such a kill to the victim cgroup's oom_kill counter as well,
	// without an OOM of that cgroup, so the guard counts it only at the
	// cgroup's next own OOM: one kill too many, which no kernel-log record
	// matches.
	globalKills map[string][]int
}

// maxGlobalKillCgroups bounds globalKills: past it, a system OOM kill in a
// further cgroup may be reported once more, as a CgroupOOM, when that
// cgroup next runs out of memory itself.
const maxGlobalKillCgroups = 4096

type input struct {
	ev   *event.Event
	kill *kmsg.Kill
}

type waiting struct {
	input
	until time.Time
}

// New starts a Reconciler that sends to next. Stop it with Stop.
func New(cfg Config, next Sink) *Reconciler {
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 1024
	}
	r := &Reconciler{cfg: cfg, next: next, in: make(chan input, cfg.QueueSize), stop: make(chan struct{}), done: make(chan struct{}),
		globalKills: map[string][]int{}}
	go r.run()
	return r
}

// Send takes an event from the guard. It never blocks.
func (r *Reconciler) Send(ev event.Event) { r.offer(input{ev: &ev}) }

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

// Stop reports whatever still waits for its match and ends the goroutine.
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
		case now := <-tick.C:
			r.expire(now)
		case <-r.stop:
			for {
				select {
				case in := <-r.in:
					r.take(in, time.Now())
				default:
					r.expire(time.Now().Add(24 * time.Hour))
					return
				}
			}
		}
	}
}

func (r *Reconciler) take(in input, now time.Time) {
	if in.ev != nil {
		if in.ev.Reason != event.CgroupOOM {
			r.out(*in.ev)
			return
		}
		for i, w := range r.waitingKills {
			if matches(in.ev, w.kill, r.abs) {
				r.waitingKills = append(r.waitingKills[:i], r.waitingKills[i+1:]...)
				r.out(merge(*in.ev, *w.kill, r.abs))
				return
			}
		}
		r.waitingEvents = append(r.waitingEvents, waiting{in, now.Add(r.cfg.Window)})
		return
	}
	k := in.kill
	// A kill line whose summary the kernel rate-limited names no cgroup:
	// it may still match a counter event by pid, so it waits like any.
	if !k.Global && k.TaskMemcg != "" && !r.inScope(r.abs(k.TaskMemcg)) {
		klog.V(3).Infof("kernel log: OOM kill of pid %d in %s, outside %s: not ours", k.Pid, k.TaskMemcg, r.cfg.Scope)
		return
	}
	for i, w := range r.waitingEvents {
		if matches(w.ev, k, r.abs) {
			r.waitingEvents = append(r.waitingEvents[:i], r.waitingEvents[i+1:]...)
			r.out(merge(*w.ev, *k, r.abs))
			return
		}
	}
	r.waitingKills = append(r.waitingKills, waiting{in, now.Add(r.cfg.Window)})
}

// expire reports, with what their own source gave, the kills whose match
// did not come in time.
func (r *Reconciler) expire(now time.Time) {
	keep := r.waitingEvents[:0]
	for _, w := range r.waitingEvents {
		if now.Before(w.until) {
			keep = append(keep, w)
			continue
		}
		if r.countedGlobalKill(w.ev) {
			continue
		}
		r.out(*w.ev)
	}
	r.waitingEvents = keep
	keepK := r.waitingKills[:0]
	for _, w := range r.waitingKills {
		if now.Before(w.until) {
			keepK = append(keepK, w)
			continue
		}
		if k := w.kill; !k.Global && k.TaskMemcg == "" {
			// No cgroup, no counter moved for it: a memcg kill outside
			// the guarded sub-tree, or one the log cannot place.
			klog.V(3).Infof("kernel log: OOM kill of pid %d (%s) in an unnamed cgroup, matched by no counter: not reported", k.Pid, k.Comm)
			continue
		}
		r.noteGlobalKill(w.kill)
		r.out(r.fromKernel(*w.kill))
	}
	r.waitingKills = keepK
}

// noteGlobalKill remembers a system OOM kill in a guarded cgroup, which that
// cgroup's kill counter will report again (globalKills).
func (r *Reconciler) noteGlobalKill(k *kmsg.Kill) {
	if !k.Global || k.TaskMemcg == "" {
		return
	}
	cg := r.abs(k.TaskMemcg)
	if !r.inScope(cg) {
		return
	}
	if _, ok := r.globalKills[cg]; !ok && len(r.globalKills) >= maxGlobalKillCgroups {
		klog.Warningf("system OOM kill of pid %d in %s: already %d cgroups with such kills pending; its cgroup counter may report it again", k.Pid, cg, len(r.globalKills))
		return
	}
	r.globalKills[cg] = append(r.globalKills[cg], k.Pid)
}

// countedGlobalKill tells whether a counter event that no kernel-log record
// matched is a system OOM kill reported before (globalKills), and forgets
// that kill. An event naming another process is a kill of its own; one
// naming no process is taken for the oldest such kill.
func (r *Reconciler) countedGlobalKill(ev *event.Event) bool {
	pids := r.globalKills[ev.ProcCgroup]
	i := -1
	switch {
	case len(pids) == 0:
	case len(ev.Processes) == 0 || ev.Processes[0].Pid <= 0:
		i = 0
	default:
		i = slices.Index(pids, ev.Processes[0].Pid)
	}
	if i < 0 {
		return false
	}
	klog.V(2).Infof("cgroup %s: a kill its counter reported matches no kernel-log record: the system OOM kill of pid %d reported there before, counted by the cgroup too; not reported again", ev.ProcCgroup, pids[i])
	if pids = slices.Delete(pids, i, i+1); len(pids) == 0 {
		delete(r.globalKills, ev.ProcCgroup)
	} else {
		r.globalKills[ev.ProcCgroup] = pids
	}
	return true
}

// abs turns a cgroup path from the kernel log into an absolute path.
func (r *Reconciler) abs(kernelPath string) string {
	if kernelPath == "" {
		return ""
	}
	return path.Join(r.cfg.MemRoot, kernelPath)
}

func (r *Reconciler) inScope(p string) bool {
	scope := strings.TrimSuffix(r.cfg.Scope, "/")
	return scope == "" || p == scope || strings.HasPrefix(p, scope+"/")
}

// matches tells whether a counter event and a kernel-log kill are the same
// kill: the same victim pid where the counters named one, else the same
// victim cgroup.
func matches(ev *event.Event, k *kmsg.Kill, abs func(string) string) bool {
	if len(ev.Processes) > 0 && ev.Processes[0].Pid > 0 {
		return ev.Processes[0].Pid == k.Pid
	}
	return k.TaskMemcg != "" && abs(k.TaskMemcg) == ev.ProcCgroup
}

// merge completes a counter event with the kernel's own account: the
// victim's memory at death, and which limit was hit (often the pod's,
// while the counter moved in the container's cgroup).
func merge(ev event.Event, k kmsg.Kill, abs func(string) string) event.Event {
	p := event.Process{Cgroup: ev.ProcCgroup}
	if len(ev.Processes) > 0 {
		p = ev.Processes[0]
	}
	p.Pid, p.Comm = k.Pid, k.Comm
	p.AnonRSSKB, p.FileRSSKB, p.ShmemRSSKB, p.TotalVMKB = k.AnonRSSKB, k.FileRSSKB, k.ShmemRSSKB, k.TotalVMKB
	ev.Processes = []event.Process{p}
	ev.Killed = event.KilledField(ev.Processes)
	if k.OOMMemcg != "" {
		ev.OOMCgroup = abs(k.OOMMemcg)
	}
	return ev
}

// fromKernel makes an event of a kernel-log kill the counters did not see:
// a system-wide OOM, or a cgroup the guard does not watch.
func (r *Reconciler) fromKernel(k kmsg.Kill) event.Event {
	ev := event.Event{
		Hostname: r.cfg.Hostname, Timestamp: time.Now(), Policy: "Kernel", Reason: event.CgroupOOM,
		OOMCgroup: r.abs(k.OOMMemcg), ProcCgroup: r.abs(k.TaskMemcg),
		Processes: []event.Process{{
			Pid: k.Pid, Comm: k.Comm, Cgroup: r.abs(k.TaskMemcg),
			AnonRSSKB: k.AnonRSSKB, FileRSSKB: k.FileRSSKB, ShmemRSSKB: k.ShmemRSSKB, TotalVMKB: k.TotalVMKB,
		}},
	}
	ev.Killed = event.KilledField(ev.Processes)
	where := ev.ProcCgroup
	if where == "" {
		where = "an unknown cgroup"
	}
	if k.Global {
		ev.Reason = event.SystemOOM
		ev.Message = fmt.Sprintf("system OOM: the kernel killed %s in %s (%s)", strings.TrimSpace(ev.Killed), where, k.Reason)
	} else {
		ev.Message = fmt.Sprintf("the kernel OOM-killed %s in %s (limit of %s hit)", strings.TrimSpace(ev.Killed), where, ev.OOMCgroup)
	}
	return ev
}

// out names the event's container and pod and sends it on.
func (r *Reconciler) out(ev event.Event) {
	r.enrich(&ev)
	if ev.Reason == event.ChildOOM && r.cfg.OnChildOOM != nil {
		r.cfg.OnChildOOM(ev)
	}
	r.next.Send(ev)
}

func (r *Reconciler) enrich(ev *event.Event) {
	id, ok := identity.FromPath(ev.ProcCgroup)
	if !ok || id.ContainerID == "" && id.PodUID == "" {
		return
	}
	ev.Identity = event.Identity{Runtime: id.Runtime, ContainerID: id.ContainerID, PodUID: id.PodUID}
	var info identity.Info
	if r.cfg.Inspector != nil {
		ctx, cancel := context.WithTimeout(context.Background(), inspectBudget)
		got, err := r.cfg.Inspector.Inspect(ctx, id)
		cancel()
		if err == nil {
			info = got
			ev.Identity = fillFrom(got.Identity, ev.Identity)
		} else {
			klog.V(3).Infof("cgroup %s: runtime does not name it: %v", ev.ProcCgroup, err)
		}
	}
	if ev.Reason == event.CgroupOOM && id.ContainerID != "" && r.childOfRunning(ev, info) {
		ev.Reason = event.ChildOOM
	}
	ev.Message = describe(*ev)
}

// inspectBudget is how long an event waits for the runtime to name its
// container and pod (off the kill path). Seconds, not one: on a busy
// cgroup v2 node, containerd took longer than one second to answer for a
// container whose memory.oom.group kill it was handling, and the Event
// went on the Node for want of the pod's name.
const inspectBudget = 5 * time.Second

// fillFrom is got, with what it lacks taken from the path's identity.
func fillFrom(got, path event.Identity) event.Identity {
	if got.Runtime == "" {
		got.Runtime = path.Runtime
	}
	if got.ContainerID == "" {
		got.ContainerID = path.ContainerID
	}
	if got.PodUID == "" {
		got.PodUID = path.PodUID
	}
	return got
}

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

// describe is the line a person reads in the log and in the Kubernetes Event.
func describe(ev event.Event) string {
	var who strings.Builder
	who.WriteString(strings.TrimSpace(ev.Killed))
	if who.Len() == 0 {
		who.WriteString("a process")
	}
	if len(ev.Processes) == 1 && ev.Processes[0].AnonRSSKB > 0 {
		fmt.Fprintf(&who, " (anon-rss %d MiB)", ev.Processes[0].AnonRSSKB>>10)
	}
	where := ev.ProcCgroup
	if ev.ContainerName != "" || ev.ContainerID != "" {
		name := ev.ContainerName
		if name == "" {
			name = shortID(ev.ContainerID)
		}
		where = "container " + name
		if ev.PodName != "" {
			where += " of pod " + ev.PodNamespace + "/" + ev.PodName
		}
	}
	switch ev.Reason {
	case event.ChildOOM:
		return fmt.Sprintf("the kernel OOM-killed %s, a child process in %s; the container keeps running, so its runtime and Kubernetes report nothing (limit of %s hit)", who.String(), where, ev.OOMCgroup)
	case event.CgroupOOM:
		return fmt.Sprintf("the kernel OOM-killed %s in %s (limit of %s hit)", who.String(), where, ev.OOMCgroup)
	case event.SystemOOM:
		return fmt.Sprintf("system OOM: the kernel killed %s in %s", who.String(), where)
	}
	return ev.Message // the guard's own; sinks add the identity
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
