package reconcile

import (
	"slices"
	"time"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/kmsg"
)

// matcher makes one event of each kernel kill that the cgroup counters and
// the kernel log both saw. The counters never miss a kill but tell little;
// the kernel log names the victim and its memory at death but is
// rate-limited and can overrun. So a kill from either source waits a short
// window for the other: matched, it is one event with the richest details
// of both; unmatched, it is reported with what its own source gave. It does
// no I/O and reads no clock: every call says when it is.
type matcher struct {
	cfg           Config
	waitingEvents []waiting // counter kills
	waitingKills  []waiting // kernel-log kills
	// globalKills holds, per victim cgroup (absolute path), the pids of
	// the system OOM kills the kernel log reported there. The kernel
	// charges such a kill to the victim cgroup's oom_kill counter as well,
	// without an OOM of that cgroup, so the guard counts it only at the
	// cgroup's next own OOM: one kill too many, which no kernel-log record
	// matches.
	globalKills map[string][]int
	// groupsOut are the memory.oom.group kills gone out in the last
	// window: a kernel-log line of one of their processes that comes
	// late is part of that one event, not a kill of its own.
	groupsOut []waiting
}

// maxGlobalKillCgroups bounds globalKills: past it, a system OOM kill in a
// further cgroup may be reported once more, as a CgroupOOM, when that
// cgroup next runs out of memory itself.
const maxGlobalKillCgroups = 4096

type waiting struct {
	ev    event.Event // a counter kill
	kill  kmsg.Kill   // a kernel-log kill
	until time.Time
	// listed: the counters named the group kill's processes (mergeGroup).
	listed bool
	// last bounds how long a group kill waits (groupHold).
	last time.Time
}

// groupHold bounds, in windows from the first source's news of it, how
// long a memory.oom.group kill waits for the other source. Its kernel-log
// lines wait for the counters all of it: the guard reports a group kill
// once its count has settled, after its last check following the last
// count move, which on a starved node comes long after the lines (360 ms
// after the victim's line, seen in the v2 VM under load: the lines had
// gone out alone, a second event). The counted kill waits a window for
// its lines, and a window more after each that comes (a slow console
// prints a line every few milliseconds; a large group's take longer).
const groupHold = 10

func newMatcher(cfg Config) *matcher {
	return &matcher{cfg: cfg, globalKills: map[string][]int{}}
}

// counted takes a counter kill: out at once if the kernel log told of it
// already, else it waits.
func (m *matcher) counted(ev event.Event, now time.Time) []event.Event {
	if ev.OOMGroup != "" {
		// One kill of a whole group, of which the kernel log prints one
		// line per process: it takes in every line of it that came, and
		// waits out its window for the rest.
		w := waiting{ev: ev, until: now.Add(m.cfg.Window), listed: len(ev.Processes) > 0, last: now.Add(groupHold * m.cfg.Window)}
		keep := m.waitingKills[:0]
		for _, k := range m.waitingKills {
			if m.inGroup(&w.ev, &k.kill) {
				w.ev = m.mergeGroup(w.ev, k.kill, w.listed)
				w.last = minTime(w.last, maxTime(k.last, w.until))
			} else {
				keep = append(keep, k)
			}
		}
		m.waitingKills = keep
		m.waitingEvents = append(m.waitingEvents, w)
		return nil
	}
	for i, w := range m.waitingKills {
		if m.matches(&ev, &w.kill) {
			m.waitingKills = slices.Delete(m.waitingKills, i, i+1)
			return []event.Event{m.merge(ev, w.kill)}
		}
	}
	m.waitingEvents = append(m.waitingEvents, waiting{ev: ev, until: now.Add(m.cfg.Window)})
	return nil
}

// kernel takes a kernel-log kill: out at once if a counter told of it
// already, else it waits. A kill of a memory cgroup outside the scope is
// someone else's.
func (m *matcher) kernel(k kmsg.Kill, now time.Time) []event.Event {
	// A kill line whose summary the kernel rate-limited names no cgroup:
	// it may still match a counter event by pid, so it waits like any.
	if !k.Global && k.TaskMemcg != "" && !inScope(m.cfg.Scope, m.abs(k.TaskMemcg)) {
		klog.V(3).Infof("kernel log: OOM kill of pid %d in %s, outside %s: not ours", k.Pid, k.TaskMemcg, m.cfg.Scope)
		return nil
	}
	for i := range m.waitingEvents {
		if w := &m.waitingEvents[i]; w.ev.OOMGroup != "" && m.inGroup(&w.ev, &k) {
			w.ev = m.mergeGroup(w.ev, k, w.listed)
			w.extend(now, m.cfg.Window)
			return nil
		}
	}
	for _, w := range m.groupsOut {
		if m.inGroup(&w.ev, &k) {
			klog.V(3).Infof("kernel log: OOM kill of pid %d (%s), part of the memory.oom.group kill of %s already reported", k.Pid, k.Comm, w.ev.OOMGroup)
			return nil
		}
	}
	for i, w := range m.waitingEvents {
		if w.ev.OOMGroup == "" && m.matches(&w.ev, &k) {
			m.waitingEvents = slices.Delete(m.waitingEvents, i, i+1)
			return []event.Event{m.merge(w.ev, k)}
		}
	}
	w := waiting{kill: k, until: now.Add(m.cfg.Window), last: now.Add(groupHold * m.cfg.Window)}
	if k.GroupKill {
		// A member's line: it, and the lines of its group before it (the
		// victim's first), wait for the counters up to the hold.
		for i := range m.waitingKills {
			if o := &m.waitingKills[i]; m.sameGroupKill(&o.kill, &k) {
				w.last = minTime(w.last, o.last)
				o.until = maxTime(o.until, o.last)
			}
		}
		w.until = w.last
	}
	m.waitingKills = append(m.waitingKills, w)
	return nil
}

// extend gives a counted group kill one more window for its lines, up to
// its last.
func (w *waiting) extend(now time.Time, window time.Duration) {
	w.until = maxTime(w.until, minTime(now.Add(window), w.last))
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// sameGroupKill tells whether a waiting kernel-log kill is of the
// memory.oom.group kill that member k was killed in: another member, or
// the victim, printed with its own cgroup, in the group.
func (m *matcher) sameGroupKill(o, k *kmsg.Kill) bool {
	if o.Global || k.OOMGroup == "" {
		return false
	}
	if o.OOMGroup != "" {
		return o.OOMGroup == k.OOMGroup
	}
	return o.TaskMemcg != "" && inScope(m.abs(k.OOMGroup), m.abs(o.TaskMemcg))
}

// expire gives out, with what their own source gave, the kills whose match
// did not come in time.
func (m *matcher) expire(now time.Time) []event.Event {
	var out []event.Event
	keepG := m.groupsOut[:0]
	for _, w := range m.groupsOut {
		if now.Before(w.until) {
			keepG = append(keepG, w)
		}
	}
	m.groupsOut = keepG
	keep := m.waitingEvents[:0]
	for _, w := range m.waitingEvents {
		switch {
		case now.Before(w.until):
			keep = append(keep, w)
		case w.ev.OOMGroup != "":
			m.groupsOut = append(m.groupsOut, waiting{ev: w.ev, until: now.Add(m.cfg.Window)})
			out = append(out, w.ev)
		case !m.countedGlobalKill(&w.ev):
			out = append(out, w.ev)
		}
	}
	m.waitingEvents = keep
	keepK := m.waitingKills[:0]
	for _, w := range m.waitingKills {
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
		m.noteGlobalKill(&w.kill)
		out = append(out, m.fromKernel(w.kill, now))
	}
	m.waitingKills = keepK
	return out
}

// noteGlobalKill remembers a system OOM kill in a guarded cgroup, which that
// cgroup's kill counter will report again (globalKills).
func (m *matcher) noteGlobalKill(k *kmsg.Kill) {
	if !k.Global || k.TaskMemcg == "" {
		return
	}
	cg := m.abs(k.TaskMemcg)
	if !inScope(m.cfg.Scope, cg) {
		return
	}
	if _, ok := m.globalKills[cg]; !ok && len(m.globalKills) >= maxGlobalKillCgroups {
		klog.Warningf("system OOM kill of pid %d in %s: already %d cgroups with such kills pending; its cgroup counter may report it again", k.Pid, cg, len(m.globalKills))
		return
	}
	m.globalKills[cg] = append(m.globalKills[cg], k.Pid)
}

// countedGlobalKill tells whether a counter kill that no kernel-log record
// matched is a system OOM kill reported before (globalKills), and forgets
// that kill. One naming another process is a kill of its own; one naming
// no process is taken for the oldest such kill.
func (m *matcher) countedGlobalKill(ev *event.Event) bool {
	pids := m.globalKills[ev.ProcCgroup]
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
		delete(m.globalKills, ev.ProcCgroup)
	} else {
		m.globalKills[ev.ProcCgroup] = pids
	}
	return true
}

func (m *matcher) abs(kernelPath string) string { return absPath(m.cfg.MemRoot, kernelPath) }

// matches tells whether a counter kill and a kernel-log kill are the same
// kill: the same victim pid where the counters named one, else the same
// victim cgroup.
func (m *matcher) matches(ev *event.Event, k *kmsg.Kill) bool {
	if len(ev.Processes) > 0 && ev.Processes[0].Pid > 0 {
		return ev.Processes[0].Pid == k.Pid
	}
	return k.TaskMemcg != "" && m.abs(k.TaskMemcg) == ev.ProcCgroup
}

// inGroup tells whether a kernel-log kill is one of a counted
// memory.oom.group kill's: a process it names, one in its cgroup, or a
// member the kernel's group scan killed (printed with the group, not its
// own cgroup).
func (m *matcher) inGroup(ev *event.Event, k *kmsg.Kill) bool {
	if k.Global {
		return false
	}
	for _, p := range ev.Processes {
		if p.Pid == k.Pid {
			return true
		}
	}
	if k.TaskMemcg != "" {
		return m.abs(k.TaskMemcg) == ev.ProcCgroup
	}
	return k.OOMGroup != "" && m.abs(k.OOMGroup) == ev.OOMGroup
}

// mergeGroup completes a group kill with one of its kernel-log lines: the
// memory at death of the process it names, and which limit was hit. A
// pid the counters did not name is a process they did not see (gone
// before the guard looked: an idle member dies at once) when the report's
// task table lists it (k.Listed; the parser dropped the lines of threads,
// the scan's second meeting with a member it signalled). Without the
// table, it is a process only when the counters named none (listed
// false): else it is taken for a thread of one they named, or a process
// born after the guard looked.
func (m *matcher) mergeGroup(ev event.Event, k kmsg.Kill, listed bool) event.Event {
	if k.OOMMemcg != "" {
		ev.OOMCgroup = m.abs(k.OOMMemcg)
	}
	ev.Processes = slices.Clone(ev.Processes)
	i := slices.IndexFunc(ev.Processes, func(p event.Process) bool { return p.Pid == k.Pid })
	if i < 0 && listed && !k.Listed {
		klog.V(3).Infof("kernel log: OOM kill of pid %d (%s) in the memory.oom.group kill of %s, not among its processes and no task table: taken for one of their threads", k.Pid, k.Comm, ev.OOMGroup)
		return ev
	}
	if i < 0 {
		ev.Processes = append(ev.Processes, event.Process{Pid: k.Pid, Cgroup: ev.ProcCgroup})
		i = len(ev.Processes) - 1
	}
	p := &ev.Processes[i]
	p.Comm = k.Comm
	p.AnonRSSKB, p.FileRSSKB, p.ShmemRSSKB, p.TotalVMKB = k.AnonRSSKB, k.FileRSSKB, k.ShmemRSSKB, k.TotalVMKB
	ev.Killed = event.KilledField(ev.Processes)
	return ev
}

// merge completes a counter kill with the kernel's own account: the
// victim's memory at death, and which limit was hit (often the pod's,
// while the counter moved in the container's cgroup).
func (m *matcher) merge(ev event.Event, k kmsg.Kill) event.Event {
	p := event.Process{Cgroup: ev.ProcCgroup}
	if len(ev.Processes) > 0 {
		p = ev.Processes[0]
	}
	p.Pid, p.Comm = k.Pid, k.Comm
	p.AnonRSSKB, p.FileRSSKB, p.ShmemRSSKB, p.TotalVMKB = k.AnonRSSKB, k.FileRSSKB, k.ShmemRSSKB, k.TotalVMKB
	ev.Processes = []event.Process{p}
	ev.Killed = event.KilledField(ev.Processes)
	if k.OOMMemcg != "" {
		ev.OOMCgroup = m.abs(k.OOMMemcg)
	}
	if k.Global {
		// The system's OOM killer took it; the kernel counts the kill in
		// the victim's cgroup too, which the guard was told of.
		ev.Reason, ev.Policy = event.SystemOOM, "Kernel"
	}
	return ev
}

// fromKernel is the event of a kernel-log kill the counters did not see: a
// system-wide OOM, or a cgroup the guard does not watch.
func (m *matcher) fromKernel(k kmsg.Kill, now time.Time) event.Event {
	ev := event.Event{
		Timestamp: now, Policy: "Kernel", Reason: event.CgroupOOM,
		OOMCgroup: m.abs(k.OOMMemcg), ProcCgroup: m.abs(k.TaskMemcg),
		Processes: []event.Process{{
			Pid: k.Pid, Comm: k.Comm, Cgroup: m.abs(k.TaskMemcg),
			AnonRSSKB: k.AnonRSSKB, FileRSSKB: k.FileRSSKB, ShmemRSSKB: k.ShmemRSSKB, TotalVMKB: k.TotalVMKB,
		}},
	}
	ev.Killed = event.KilledField(ev.Processes)
	if k.Global {
		ev.Reason = event.SystemOOM
	}
	return ev
}
