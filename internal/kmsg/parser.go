package kmsg

import (
	"strings"
	"time"
)

const (
	// contextTTL bounds how long a report's context (summary, "Task in",
	// "Kill process") may wait for its kill line. A report prints them
	// within one call, but on old kernels the task table between them goes
	// to a slow console synchronously and can take seconds.
	contextTTL = 30 * time.Second

	// groupGap ends a memory.oom.group section: its members are printed
	// back to back by one call (gaps of up to ~50 ms are seen in real logs
	// while oom_reaper interleaves). The next OOM's first kill line looks
	// exactly like a member, and when rate limiting has eaten its summary
	// only the gap tells them apart.
	groupGap = 250 * time.Millisecond

	// maxGroupPids bounds the duplicate filter of one group section.
	maxGroupPids = 4096

	// maxTaskRows bounds the task table kept of one report; a longer one
	// (a system OOM on a large node) is not used (report.tasks).
	maxTaskRows = 8192

	// maxPartial bounds a line reassembled from fragments.
	maxPartial = 16 << 10
)

// Parser is a state machine fed /dev/kmsg records in order; Feed returns the
// Kill a record completes. A Kill is completed by its kill line alone
// (the kernel never rate-limits that line) and merged with whatever context
// of the same report was seen: the summary for the same pid, the legacy
// "Task in" and "Kill process" lines, the memory.oom.group announcement.
//
// A Parser is not safe for concurrent use.
type Parser struct {
	rep report

	// The last kill emitted: a group announcement names no victim, and its
	// victim is the kill line printed just before it.
	lastKillPid  int
	lastKillMono time.Duration

	// A summary or "Task in" line that arrived in fragments, waiting for
	// the rest.
	partial    string
	partialRec Record
}

// report is what is known of the OOM report being printed.
type report struct {
	valid   bool
	updated time.Duration // Monotonic of its last context line, for contextTTL

	sum        summary
	hasSummary bool

	legacyTask, legacyOOM string // from "Task in"
	hasTaskIn             bool

	reason  string // of the legacy "Kill process" line
	chosen  int    // pid the kernel chose: summary pid= or legacy Kill process
	waiting bool   // the kill line for chosen (or its child) has not come yet
	killed  bool   // a kill line of this report was emitted

	group     string
	inGroup   bool
	groupSeen time.Duration
	groupPids map[int]struct{}

	// tasks is the report's task table ("Tasks state"): the process (tgid)
	// of each task it lists, by the task's pid and by the tgid. The group
	// scan goes by process but can meet one twice (a member it signalled
	// moves to its cgroup's dying tasks while the scan runs, and so did the
	// victim, killed just before), printing it again under the pid of
	// whichever thread still holds its memory: the table, printed before
	// any kill, tells such a thread from a member. Nil when the report had
	// none (dump_header is rate-limited; vm.oom_dump_tasks=0) or it was
	// longer than maxTaskRows. Nothing else in the log tells them apart:
	// a thread's line has its process's figures, and so have forked
	// workers of one another (the 5.0 sample's a.out children).
	tasks     map[int]int
	inTable   bool // after the table's header, before the report's kill
	tableRows int
}

// NewParser returns a Parser with no context.
func NewParser() *Parser { return &Parser{} }

// Lost tells the parser that records were lost (ring buffer overrun): any
// context it holds may belong to a report whose kill line is gone, so it is
// dropped rather than merged into an unrelated kill.
func (p *Parser) Lost() {
	p.rep = report{}
	p.partial = ""
	p.lastKillPid = 0
}

// Feed consumes one record and returns the Kill it completes, if any.
// Records not from the kernel (facility != 0) are ignored: anything with
// write access to /dev/kmsg can inject text, but not as facility 0.
func (p *Parser) Feed(r Record) (Kill, bool) {
	if r.Facility != 0 {
		return Kill{}, false
	}
	text := r.Text
	if p.partial != "" {
		if (r.Flag == 'c' || r.Flag == '+') && len(p.partial)+len(text) <= maxPartial {
			text = p.partial + text
			r.Seq, r.Monotonic = p.partialRec.Seq, p.partialRec.Monotonic
		} else {
			// The rest never came: use what arrived.
			p.line(p.partialRec, p.partial)
		}
		p.partial = ""
	}
	if fragment(text) {
		p.partial, p.partialRec = text, r
		return Kill{}, false
	}
	return p.line(r, text)
}

// fragment reports whether text is the start of a context line that the
// kernel builds with pr_cont and that may continue in the next record.
func fragment(text string) bool {
	switch {
	case strings.HasPrefix(text, txtSummary):
		_, ok := parseSummary(text)
		return !ok
	case strings.HasPrefix(text, txtTasksIn):
		return !strings.Contains(text, txtGroupSet)
	case strings.HasPrefix(text, txtTaskIn):
		i := strings.Index(text, txtLimitOf)
		return i < 0 || i+len(txtLimitOf) == len(text)
	}
	return false
}

func (p *Parser) line(r Record, text string) (Kill, bool) {
	// Some lines end in a space (6.x "CPU: ... PREEMPT(none) "); relayed
	// logs add "\r". No line this parser reads ends in significant blanks.
	text = strings.TrimRight(text, " \t\r")
	rep := &p.rep
	if rep.valid && r.Monotonic-rep.updated > contextTTL {
		*rep = report{}
	}
	if rep.inGroup && r.Monotonic-rep.groupSeen > groupGap {
		rep.inGroup, rep.groupPids = false, nil
	}
	switch {
	case strings.HasPrefix(text, txtReaper):
		return Kill{}, false

	case rep.inTable && strings.HasPrefix(text, "["):
		if pid, tgid, ok := taskRow(text); ok {
			p.taskRow(pid, tgid)
		}

	case strings.HasPrefix(text, "[") && taskHeader(text):
		// After "invoked oom-killer", which began the report; one that
		// has killed already is over.
		if rep.killed || rep.tasks != nil {
			p.newReport(r)
		}
		p.touch(r)
		rep.tasks, rep.inTable, rep.tableRows = map[int]int{}, true, 0

	case strings.HasPrefix(text, txtSummary):
		s, ok := parseSummary(text)
		if !ok {
			return Kill{}, false
		}
		if rep.hasSummary || rep.killed || rep.hasTaskIn && s.global {
			p.newReport(r)
		}
		p.touch(r)
		rep.inTable = false
		rep.sum, rep.hasSummary = s, true
		rep.chosen, rep.waiting = s.pid, true

	case strings.HasPrefix(text, txtTasksIn):
		path, ok := groupLine(text)
		if !ok {
			return Kill{}, false
		}
		rep.group, rep.inGroup, rep.groupSeen = path, true, r.Monotonic
		rep.groupPids = map[int]struct{}{}
		if p.lastKillPid != 0 && r.Monotonic-p.lastKillMono <= groupGap {
			rep.groupPids[p.lastKillPid] = struct{}{}
		}

	case strings.HasPrefix(text, txtTaskIn):
		task, oom, ok := taskIn(text)
		if !ok {
			return Kill{}, false
		}
		if rep.hasTaskIn || rep.killed || rep.hasSummary && rep.sum.global {
			p.newReport(r)
		}
		p.touch(r)
		rep.legacyTask, rep.legacyOOM, rep.hasTaskIn = task, oom, true

	case strings.HasSuffix(text, txtExiting):
		if pid, ok := exitingLine(text); ok && pid == rep.chosen {
			rep.waiting = false
		}

	case strings.HasSuffix(text, txtSacrifice):
		reason, pid, ok := chooseLine(text)
		if !ok {
			return Kill{}, false
		}
		memcg, global := reasonScope(reason)
		if rep.killed || rep.chosen != 0 && rep.chosen != pid || !p.fits(memcg, global) {
			p.newReport(r)
		}
		p.touch(r)
		rep.reason, rep.chosen, rep.waiting = reason, pid, true

	case strings.HasSuffix(text, txtSharing):
		k, ok := sharingLine(text)
		if !ok || !rep.valid || !rep.killed {
			// Printed only right after its report's kill line; alone it
			// cannot be told from a stray message.
			return Kill{}, false
		}
		p.reportLevel(&k)
		return p.emit(r, k), true

	case strings.Contains(text, txtKilled):
		k, ok := killLine(text)
		if !ok {
			return Kill{}, false
		}
		rep.inTable = false
		// The table names the process of a thread it lists.
		tgid, listed := rep.tasks[k.Pid]
		if listed {
			k.Pid, k.Listed = tgid, true
		}
		if rep.inGroup && p.seenInGroup(&k, listed) {
			// The group scan meets the victim or a member again: one
			// SIGKILL, one Kill.
			rep.groupSeen = r.Monotonic
			return Kill{}, false
		}
		switch {
		case rep.valid && rep.waiting && k.Pid == rep.chosen:
			p.reportLevel(&k)
			p.taskLevel(&k)
		case rep.inGroup:
			if rep.valid {
				p.reportLevel(&k)
			}
			k.GroupKill, k.OOMGroup, k.Enriched = true, rep.group, true
		case rep.valid && rep.waiting && rep.chosen != 0:
			// Legacy "or sacrifice child" killed a child of the chosen
			// process, or the kernel fell back to another thread of it:
			// the report's cgroup applies, the chosen one's own may not.
			p.reportLevel(&k)
		}
		if rep.inGroup {
			rep.groupSeen = r.Monotonic
			if len(rep.groupPids) < maxGroupPids {
				rep.groupPids[k.Pid] = struct{}{}
			}
		}
		rep.waiting = false
		rep.killed = rep.valid
		return p.emit(r, k), true

	case strings.Contains(text, txtInvoked):
		p.newReport(r)
	}
	return Kill{}, false
}

// fits reports whether a reason's scope agrees with the context gathered so
// far; a disagreement means the context belongs to another report.
func (p *Parser) fits(memcg, global bool) bool {
	rep := &p.rep
	if !rep.valid {
		return true
	}
	ctxMemcg := rep.hasTaskIn || rep.hasSummary && rep.sum.memcg
	ctxGlobal := rep.hasSummary && rep.sum.global
	return !(memcg && ctxGlobal || global && ctxMemcg)
}

// taskRow adds a row of the report's task table; past maxTaskRows the
// table is dropped: an incomplete one cannot tell that a pid is no member.
func (p *Parser) taskRow(pid, tgid int) {
	rep := &p.rep
	if rep.tasks == nil {
		return // dropped already
	}
	if rep.tableRows++; rep.tableRows > maxTaskRows {
		rep.tasks, rep.inTable = nil, false
		return
	}
	rep.tasks[pid], rep.tasks[tgid] = tgid, tgid
}

// seenInGroup tells whether a kill line of the group scan is of a process
// already killed in it (k.Pid is the table's process, if listed): the same
// pid again, or, with the report's task table, a pid it does not list:
// a thread's (the table lists processes, by the thread holding the
// memory when it was printed), or a process forked after it, while the
// kernel held the OOM lock and the cgroup was at its limit, which is
// taken as never happening. Without the table a new pid is a Kill, that
// Listed false leaves to the counters to place (reconcile).
func (p *Parser) seenInGroup(k *Kill, listed bool) bool {
	rep := &p.rep
	if _, dup := rep.groupPids[k.Pid]; dup {
		return true
	}
	return rep.tasks != nil && !listed
}

func (p *Parser) newReport(r Record) {
	p.rep = report{valid: true, updated: r.Monotonic}
}

func (p *Parser) touch(r Record) {
	p.rep.valid, p.rep.updated = true, r.Monotonic
}

// reportLevel copies what is true of every kill of the report: its scope and
// the cgroup whose limit was hit.
func (p *Parser) reportLevel(k *Kill) {
	rep := &p.rep
	k.Enriched = true
	if k.Reason == "" {
		k.Reason = rep.reason
	}
	switch {
	case rep.hasSummary:
		k.Constraint = rep.sum.constraint
		k.OOMMemcg = rep.sum.oomMemcg
		k.Memcg, k.Global = rep.sum.memcg, rep.sum.global
	case rep.hasTaskIn:
		k.OOMMemcg = rep.legacyOOM
		k.Memcg = true
	}
}

// taskLevel copies what is true only of the process the report chose.
func (p *Parser) taskLevel(k *Kill) {
	rep := &p.rep
	switch {
	case rep.hasSummary:
		memcg, comm := rep.sum.taskMemcg(k.Comm)
		k.TaskMemcg = memcg
		if k.Comm == "" {
			k.Comm = comm
		}
		if k.UID < 0 {
			k.UID = rep.sum.uid
		}
	case rep.hasTaskIn:
		k.TaskMemcg = rep.legacyTask
	}
}

func (p *Parser) emit(r Record, k Kill) Kill {
	if m, g := reasonScope(k.Reason); m || g {
		// The kill line's own reason is the kernel's word for this kill.
		k.Memcg, k.Global = m, g
	}
	k.Seq, k.Monotonic = r.Seq, r.Monotonic
	p.lastKillPid, p.lastKillMono = k.Pid, r.Monotonic
	return k
}
