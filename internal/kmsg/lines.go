package kmsg

import (
	"strconv"
	"strings"
	"time"
)

// Kill is one process the kernel's OOM killer sent SIGKILL to, as its log
// tells it. Fields the kernel did not print (older formats, or context lost
// to rate limiting or an overrun) are left at their zero value, except UID,
// which is -1 when unknown because 0 is root.
type Kill struct {
	Pid  int
	Comm string // /proc/PID/comm at the time of the kill, at most 15 bytes on current kernels
	UID  int    // -1: not printed

	// Reason is the kernel's prefix to the kill line ("Memory cgroup out of
	// memory", "Out of memory", "Out of memory (oom_kill_allocating_task)"),
	// or that of the legacy "Kill process" line of the same report.
	Reason string

	// Memcg and Global say whether the kernel said this was a memory cgroup
	// OOM or a system-wide one. Both are false when the log did not say (a
	// 4.x kill line whose report context was lost). Global is decided by
	// global_oom / the reason, not by Constraint: some 5.0 kernels printed
	// CONSTRAINT_NONE for memcg OOMs.
	Memcg      bool
	Global     bool
	Constraint string // CONSTRAINT_MEMCG, CONSTRAINT_NONE, ...; only from the 4.19+ summary

	// OOMMemcg is the cgroup whose limit was hit (often the pod, not the
	// container); TaskMemcg is the victim's own. Both are as the kernel
	// printed them: relative to the memory hierarchy's root.
	OOMMemcg  string
	TaskMemcg string

	// GroupKill marks a process killed because memory.oom.group was set on
	// OOMGroup. The first victim of a group kill is printed before the kernel
	// announces the group, so it carries GroupKill=false; the other members
	// carry true.
	GroupKill bool
	OOMGroup  string

	// Listed: the report's task table lists Pid as a process, its tgid
	// (the kill line named the process's thread that held its memory,
	// Pid is the process). A group kill's members are all listed when
	// the report has a table; without one a member's line cannot be told
	// from the line of a thread of one already killed.
	Listed bool

	// SharedMM marks a process killed because it shared the victim's memory
	// ("Kill process N (C) sharing same memory", kernels before 4.6).
	SharedMM bool

	TotalVMKB, AnonRSSKB, FileRSSKB, ShmemRSSKB, PgTablesKB uint64
	OOMScoreAdj                                             int
	HasOOMScoreAdj                                          bool

	// Enriched is true when the report's summary or legacy context for this
	// pid (or for the report) was merged in.
	Enriched bool

	Seq       uint64        // of the kill line's record
	Monotonic time.Duration // of the kill line's record
}

// The kernel's fixed texts, in one place so that their spelling is checked
// once against mm/oom_kill.c and mm/memcontrol.c.
const (
	txtKilled       = "Killed process "
	txtKill         = "Kill process "
	txtSacrifice    = " or sacrifice child"
	txtSharing      = " sharing same memory"
	txtSummary      = "oom-kill:"
	txtTaskIn       = "Task in "
	txtLimitOf      = " killed as a result of limit of "
	txtTasksIn      = "Tasks in "
	txtGroupSet     = " are going to be killed due to memory.oom.group set"
	txtVictim       = "OOM victim "
	txtExiting      = " is already exiting. Skip killing the task"
	txtInvoked      = " invoked oom-killer: "
	txtReaper       = "oom_reaper: "
	txtMemcgReason  = "Memory cgroup out of memory"
	txtGlobalReason = "Out of memory"
)

// killLine parses a kill line in any of its formats:
//
//	2.6.32 (RHEL 6):  Killed process PID, UID N, (COMM) total-vm:..kB, anon-rss:..kB, file-rss:..kB
//	3.10 .. 4.5:      Killed process PID (COMM) total-vm:..kB, anon-rss:..kB, file-rss:..kB
//	RHEL 7 3.10:      Killed process PID (COMM), UID N, total-vm:..kB, anon-rss:..kB, file-rss:..kB, shmem-rss:..kB
//	4.6 .. 5.0:       Killed process PID (COMM) total-vm:..kB, anon-rss:..kB, file-rss:..kB, shmem-rss:..kB
//	5.1 ..:           REASON: Killed process PID (COMM) total-vm:..kB, ..., shmem-rss:..kB, UID:N pgtables:..kB oom_score_adj:N
//
// COMM may contain anything, "(", ")", ", " and "total-vm:" included, but the
// text after it holds only numbers, so the tail is found from the right.
func killLine(text string) (k Kill, ok bool) {
	i := strings.Index(text, txtKilled)
	if i < 0 {
		return k, false
	}
	if i > 0 {
		if !strings.HasSuffix(text[:i], ": ") {
			return k, false
		}
		k.Reason = text[:i-2]
	}
	k.UID = -1
	rest := text[i+len(txtKilled):]
	k.Pid, rest, ok = leadingPid(rest)
	if !ok {
		return k, false
	}
	if strings.HasPrefix(rest, ", UID ") {
		uid, after, ok := leadingUint(rest[len(", UID "):])
		if !ok || !strings.HasPrefix(after, ", ") {
			return k, false
		}
		k.UID, rest = int(uid), after[len(", "):]
	} else if !strings.HasPrefix(rest, " ") {
		return k, false
	} else {
		rest = rest[1:]
	}
	if !strings.HasPrefix(rest, "(") {
		return k, false
	}
	rest = rest[1:]
	tail := strings.LastIndex(rest, " total-vm:")
	if tail < 0 {
		tail = strings.LastIndex(rest, " vsz:")
	}
	if tail < 0 {
		return k, false
	}
	head := rest[:tail]
	paren := strings.LastIndexByte(head, ')')
	if paren < 0 {
		return k, false
	}
	k.Comm = head[:paren]
	// Between ")" and the numbers: nothing, "," or RHEL 7's ", UID N,".
	if between := strings.Trim(head[paren+1:], ", "); between != "" {
		n, ok := strings.CutPrefix(between, "UID ")
		if !ok {
			return k, false
		}
		uid, err := strconv.ParseUint(n, 10, 31)
		if err != nil {
			return k, false
		}
		k.UID = int(uid)
	}
	for _, f := range strings.Fields(strings.ReplaceAll(rest[tail:], ",", " ")) {
		key, val, ok := strings.Cut(f, ":")
		if !ok {
			continue
		}
		switch key {
		case "total-vm", "vsz":
			k.TotalVMKB = kB(val)
		case "anon-rss":
			k.AnonRSSKB = kB(val)
		case "file-rss":
			k.FileRSSKB = kB(val)
		case "shmem-rss":
			k.ShmemRSSKB = kB(val)
		case "pgtables":
			k.PgTablesKB = kB(val)
		case "UID":
			if u, err := strconv.ParseUint(val, 10, 31); err == nil {
				k.UID = int(u)
			}
		case "oom_score_adj":
			if a, err := strconv.Atoi(val); err == nil && a >= -1000 && a <= 1000 {
				k.OOMScoreAdj, k.HasOOMScoreAdj = a, true
			}
		}
	}
	return k, true
}

// kB parses "1234kB"; a malformed number is 0, never an error, because the
// pid and comm are what matter and the counters are the truth.
func kB(s string) uint64 {
	n, _ := strconv.ParseUint(strings.TrimSuffix(s, "kB"), 10, 64)
	return n
}

// leadingPid reads the decimal pid at the start of s.
func leadingPid(s string) (int, string, bool) {
	n, rest, ok := leadingUint(s)
	if !ok || n == 0 || n > 1<<22 {
		return 0, s, false
	}
	return int(n), rest, true
}

func leadingUint(s string) (uint64, string, bool) {
	i := 0
	for i < len(s) && i < 20 && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, s, false
	}
	n, err := strconv.ParseUint(s[:i], 10, 64)
	if err != nil {
		return 0, s, false
	}
	return n, s[i:], true
}

// summary is the 4.19+ line
//
//	oom-kill:constraint=C,nodemask=N,cpuset=NAME,mems_allowed=M,oom_memcg=PATH|global_oom,task_memcg=PATH,task=COMM,pid=PID,uid=UID
//
// nodemask and mems_allowed are range lists ("0-1,3"), cpuset is a cgroup
// name and the paths and COMM are arbitrary: only the keys the kernel always
// prints, found from the right for the tail, split it.
type summary struct {
	constraint string
	global     bool
	memcg      bool
	oomMemcg   string
	// taskSeg is "PATH,task=COMM": which ",task=" separates them is decided
	// once the kill line gives the COMM exactly.
	taskSeg string
	pid     int
	uid     int
}

func parseSummary(text string) (s summary, ok bool) {
	body, ok := strings.CutPrefix(text, txtSummary)
	if !ok {
		return s, false
	}
	body = strings.TrimRight(body, " ")
	u := strings.LastIndex(body, ",uid=")
	if u < 0 {
		return s, false
	}
	uid, after, ok := leadingUint(body[u+len(",uid="):])
	if !ok || after != "" || uid > 1<<31 {
		return s, false
	}
	s.uid = int(uid)
	p := strings.LastIndex(body[:u], ",pid=")
	if p < 0 {
		return s, false
	}
	if s.pid, after, ok = leadingPid(body[p+len(",pid=") : u]); !ok || after != "" {
		return s, false
	}
	body = body[:p]
	if c, ok := strings.CutPrefix(body, "constraint="); ok {
		s.constraint, _, _ = strings.Cut(c, ",")
	}
	tm := strings.Index(body, ",task_memcg=")
	if tm < 0 {
		return s, false
	}
	s.taskSeg = body[tm+len(",task_memcg="):]
	ctx := body[:tm]
	if om := strings.Index(ctx, ",oom_memcg="); om >= 0 {
		s.memcg, s.oomMemcg = true, ctx[om+len(",oom_memcg="):]
	} else if strings.HasSuffix(ctx, ",global_oom") {
		s.global = true
	}
	return s, true
}

// taskMemcg splits taskSeg knowing the victim's comm; without it (or if it
// does not match) the last ",task=" is taken, since a 15-byte comm is less
// likely to contain one than a path is.
func (s summary) taskMemcg(comm string) (memcg, task string) {
	if comm != "" {
		if m, ok := strings.CutSuffix(s.taskSeg, ",task="+comm); ok {
			return m, comm
		}
	}
	if i := strings.LastIndex(s.taskSeg, ",task="); i >= 0 {
		return s.taskSeg[:i], s.taskSeg[i+len(",task="):]
	}
	return s.taskSeg, ""
}

// taskIn parses the legacy (up to 4.18) "Task in TASK_MEMCG killed as a
// result of limit of OOM_MEMCG".
func taskIn(text string) (task, oom string, ok bool) {
	rest, ok := strings.CutPrefix(text, txtTaskIn)
	if !ok {
		return "", "", false
	}
	task, oom, ok = strings.Cut(rest, txtLimitOf)
	if !ok || task == "" || oom == "" {
		return "", "", false
	}
	return task, strings.TrimRight(oom, " "), true
}

// chooseLine parses the legacy (up to 5.0) "REASON: Kill process PID (COMM)
// score N or sacrifice child": the kernel's choice, which may still be
// replaced by one of its children in the kill line that follows.
func chooseLine(text string) (reason string, pid int, ok bool) {
	if !strings.HasSuffix(text, txtSacrifice) {
		return "", 0, false
	}
	i := strings.Index(text, txtKill)
	if i < 2 || text[i-2:i] != ": " {
		return "", 0, false
	}
	pid, rest, ok := leadingPid(text[i+len(txtKill):])
	if !ok || !strings.HasPrefix(rest, " (") {
		return "", 0, false
	}
	return text[:i-2], pid, true
}

// sharingLine parses "Kill process PID (COMM) sharing same memory" (before
// 4.6): a process that shared the victim's mm and was killed with it.
func sharingLine(text string) (k Kill, ok bool) {
	rest, ok := strings.CutPrefix(text, txtKill)
	if !ok {
		return k, false
	}
	rest, ok = strings.CutSuffix(rest, txtSharing)
	if !ok {
		return k, false
	}
	k.UID = -1
	k.Pid, rest, ok = leadingPid(rest)
	if !ok || !strings.HasPrefix(rest, " (") || !strings.HasSuffix(rest, ")") {
		return k, false
	}
	k.Comm = rest[2 : len(rest)-1]
	k.SharedMM = true
	return k, true
}

// groupLine parses "Tasks in PATH are going to be killed due to
// memory.oom.group set".
func groupLine(text string) (path string, ok bool) {
	rest, ok := strings.CutPrefix(text, txtTasksIn)
	if !ok {
		return "", false
	}
	path, ok = strings.CutSuffix(strings.TrimRight(rest, " "), txtGroupSet)
	return path, ok && path != ""
}

// taskHeader reports whether text is the header of an OOM report's task
// table: "[  pid  ]   uid  tgid total_vm      rss ..." (6.x), "[ pid ]   uid
// tgid total_vm ..." (3.10 to 4.x); the first three columns never changed.
func taskHeader(text string) bool {
	f := strings.Fields(text)
	return len(f) >= 5 && f[0] == "[" && f[1] == "pid" && f[2] == "]" && f[3] == "uid" && f[4] == "tgid"
}

// taskRow parses a row of the task table, "[  PID]   UID  TGID total_vm
// ... name": PID is the task the kernel found holding the process's memory
// (its leader, unless the leader has exited), TGID the process.
func taskRow(text string) (pid, tgid int, ok bool) {
	rest, ok := strings.CutPrefix(text, "[")
	if !ok {
		return 0, 0, false
	}
	pid, rest, ok = leadingPid(strings.TrimLeft(rest, " "))
	if !ok || !strings.HasPrefix(rest, "]") {
		return 0, 0, false
	}
	f := strings.Fields(rest[1:])
	if len(f) < 4 { // uid, tgid, total_vm and more
		return 0, 0, false
	}
	if _, err := strconv.ParseUint(f[0], 10, 32); err != nil {
		return 0, 0, false
	}
	tgid, after, ok := leadingPid(f[1])
	if !ok || after != "" {
		return 0, 0, false
	}
	return pid, tgid, true
}

// exitingLine parses "REASON: OOM victim PID (COMM) is already exiting.
// Skip killing the task": the kernel chose PID but sent no signal.
func exitingLine(text string) (pid int, ok bool) {
	if !strings.HasSuffix(text, txtExiting) {
		return 0, false
	}
	i := strings.Index(text, txtVictim)
	if i < 0 {
		return 0, false
	}
	pid, _, ok = leadingPid(text[i+len(txtVictim):])
	return pid, ok
}

// reasonScope says what a kill reason implies about the OOM's scope.
func reasonScope(reason string) (memcg, global bool) {
	switch {
	case strings.HasPrefix(reason, txtMemcgReason):
		return true, false
	case strings.HasPrefix(reason, txtGlobalReason):
		return false, true
	}
	return false, false
}
