package kmsg

import (
	"testing"
	"time"
)

func TestKillLineFormats(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Kill
	}{
		{"Killed process 1234, UID 500, (java) total-vm:2000kB, anon-rss:1000kB, file-rss:4kB", // 2.6.32 (RHEL 6)
			Kill{Pid: 1234, UID: 500, Comm: "java", TotalVMKB: 2000, AnonRSSKB: 1000, FileRSSKB: 4}},
		{"Killed process 1234 (java) total-vm:2000kB, anon-rss:1000kB, file-rss:4kB", // 3.10
			Kill{Pid: 1234, UID: -1, Comm: "java", TotalVMKB: 2000, AnonRSSKB: 1000, FileRSSKB: 4}},
		{"Killed process 18177 (palo_be), UID 0, total-vm:7kB, anon-rss:4kB, file-rss:0kB, shmem-rss:1kB", // RHEL 7
			Kill{Pid: 18177, UID: 0, Comm: "palo_be", TotalVMKB: 7, AnonRSSKB: 4, ShmemRSSKB: 1}},
		{"Out of memory (oom_kill_allocating_task): Killed process 5 (a) total-vm:1kB, anon-rss:2kB, file-rss:3kB, shmem-rss:4kB, UID:7 pgtables:5kB oom_score_adj:-998",
			Kill{Pid: 5, UID: 7, Comm: "a", Reason: "Out of memory (oom_kill_allocating_task)", TotalVMKB: 1, AnonRSSKB: 2, FileRSSKB: 3,
				ShmemRSSKB: 4, PgTablesKB: 5, OOMScoreAdj: -998, HasOOMScoreAdj: true}},
		// COMM with everything that could confuse an anchor.
		{"Memory cgroup out of memory: Killed process 9 (a) total-vm:1kB) total-vm:2kB, anon-rss:3kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:1kB oom_score_adj:0",
			Kill{Pid: 9, UID: 0, Comm: "a) total-vm:1kB", Reason: "Memory cgroup out of memory", TotalVMKB: 2, AnonRSSKB: 3, PgTablesKB: 1, HasOOMScoreAdj: true}},
		{"Killed process 9 ((x), y) total-vm:1kB, anon-rss:3kB, file-rss:0kB, shmem-rss:0kB",
			Kill{Pid: 9, UID: -1, Comm: "(x), y", TotalVMKB: 1, AnonRSSKB: 3}},
		{"Killed process 9 (Web Content) total-vm:1kB, anon-rss:3kB, file-rss:0kB, shmem-rss:0kB",
			Kill{Pid: 9, UID: -1, Comm: "Web Content", TotalVMKB: 1, AnonRSSKB: 3}},
		{"Killed process 9 (a), UID 5,) total-vm:1kB, anon-rss:3kB, file-rss:0kB", // RHEL 7 shape inside COMM
			Kill{Pid: 9, UID: -1, Comm: "a), UID 5,", TotalVMKB: 1, AnonRSSKB: 3}},
		{"Killed process 9 () total-vm:1kB, anon-rss:3kB, file-rss:0kB",
			Kill{Pid: 9, UID: -1, TotalVMKB: 1, AnonRSSKB: 3}},
	} {
		got, ok := killLine(tc.in)
		if !ok || got != tc.want {
			t.Errorf("killLine(%q) =\n %+v, %v\nwant %+v", tc.in, got, ok, tc.want)
		}
	}
	for _, in := range []string{
		"oom_reaper: reaped process 27881 (stress), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB",
		"Memory cgroup out of memory: OOM victim 5 (a) is already exiting. Skip killing the task",
		"Killed process 0 (x) total-vm:1kB",          // pid 0 is no process
		"Killed process 99999999 (x) total-vm:1kB",   // above PID_MAX_LIMIT
		"Killed process 12 (x)",                      // no tail: not the OOM killer's line
		"Killed process 12 x) total-vm:1kB",          // no "("
		"Killed process 12 (x total-vm:1kB",          // no ")"
		"Killed process 12 (x), GID 3, total-vm:1kB", // unknown field between
		"foo:Killed process 12 (x) total-vm:1kB",     // prefix not "REASON: "
		"Killed process 12, UID x, (a) total-vm:1kB", // bad RHEL 6 UID
		"Killed process 12 (a), UID 99999999999999, total-vm:1kB",
	} {
		if k, ok := killLine(in); ok {
			t.Errorf("killLine(%q) = %+v, want no kill", in, k)
		}
	}
}

func TestSummaryWithCommas(t *testing.T) {
	s, ok := parseSummary("oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=0-1,3,cpuset=a,b,mems_allowed=0,2-3,oom_memcg=/x,y/p,task_memcg=/x,y/p/c,task=a,task=b,pid=7,uid=1000")
	if !ok || s.constraint != "CONSTRAINT_MEMCG" || s.oomMemcg != "/x,y/p" || s.pid != 7 || s.uid != 1000 || !s.memcg || s.global {
		t.Fatalf("parseSummary = %+v, %v", s, ok)
	}
	// The kill line's COMM decides which ",task=" ends the path.
	if m, c := s.taskMemcg("a,task=b"); m != "/x,y/p/c" || c != "a,task=b" {
		t.Errorf("taskMemcg with comm = %q, %q", m, c)
	}
	if m, c := s.taskMemcg(""); m != "/x,y/p/c,task=a" || c != "b" {
		t.Errorf("taskMemcg without comm = %q, %q", m, c)
	}
	for _, in := range []string{
		"oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/kubepods/burstable/pod3902af1e-8c>",
		"oom-kill:constraint=X,task_memcg=/a,task=x,pid=1,uid=",
		"oom-kill:constraint=X,task_memcg=/a,task=x,pid=0,uid=0",
		"oom-kill:constraint=X,task=x,pid=1,uid=0",
		"oom-kill:,pid=1,uid=0x",
	} {
		if s, ok := parseSummary(in); ok {
			t.Errorf("parseSummary(%q) = %+v, want failure", in, s)
		}
	}
}

// rec builds a kernel record for the state machine tests.
func rec(seq uint64, at time.Duration, text string) Record {
	return Record{Seq: seq, Monotonic: at, Flag: '-', Text: text}
}

const (
	sum100  = "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/pod,task_memcg=/pod/c1,task=app,pid=100,uid=0"
	kill100 = "Memory cgroup out of memory: Killed process 100 (app) total-vm:10kB, anon-rss:5kB, file-rss:1kB, shmem-rss:0kB, UID:0 pgtables:1kB oom_score_adj:0"
	kill200 = "Memory cgroup out of memory: Killed process 200 (app) total-vm:10kB, anon-rss:5kB, file-rss:1kB, shmem-rss:0kB, UID:0 pgtables:1kB oom_score_adj:0"
	kill300 = "Memory cgroup out of memory: Killed process 300 (app) total-vm:10kB, anon-rss:5kB, file-rss:1kB, shmem-rss:0kB, UID:0 pgtables:1kB oom_score_adj:0"
)

func feed(p *Parser, recs ...Record) []Kill {
	var out []Kill
	for _, r := range recs {
		if k, ok := p.Feed(r); ok {
			out = append(out, k)
		}
	}
	return out
}

// In a storm the summary is rate-limited: the kill lines without one must
// still be reported, and must not borrow the last summary's cgroups.
func TestRateLimitedSummary(t *testing.T) {
	kills := feed(NewParser(),
		rec(1, 0, sum100), rec(2, 1, kill100),
		rec(3, 2*time.Second, kill200),
		rec(4, 3*time.Second, kill300))
	if len(kills) != 3 {
		t.Fatalf("got %d kills, want 3: %+v", len(kills), kills)
	}
	if k := kills[0]; k.TaskMemcg != "/pod/c1" || k.OOMMemcg != "/pod" || !k.Enriched {
		t.Errorf("first kill not merged with its summary: %+v", k)
	}
	for _, k := range kills[1:] {
		if k.Enriched || k.TaskMemcg != "" || k.OOMMemcg != "" || !k.Memcg || k.Reason != txtMemcgReason {
			t.Errorf("kill without summary: %+v, want bare memcg kill", k)
		}
	}
}

// The legacy equivalent: the "Kill process" line is never rate-limited,
// "Task in" is; a later report must not inherit an earlier "Task in".
func TestLegacyStorm(t *testing.T) {
	kills := feed(NewParser(),
		rec(1, 0, "Task in /a killed as a result of limit of /a"),
		rec(2, 1, "Memory cgroup out of memory: Kill process 10 (x) score 9 or sacrifice child"),
		rec(3, 2, "Killed process 10 (x) total-vm:1kB, anon-rss:1kB, file-rss:0kB"),
		rec(4, time.Second, "Memory cgroup out of memory: Kill process 20 (y) score 9 or sacrifice child"),
		rec(5, time.Second+1, "Killed process 21 (z) total-vm:1kB, anon-rss:1kB, file-rss:0kB"))
	if len(kills) != 2 {
		t.Fatalf("got %d kills, want 2: %+v", len(kills), kills)
	}
	if k := kills[0]; k.TaskMemcg != "/a" || k.OOMMemcg != "/a" || !k.Memcg {
		t.Errorf("first kill: %+v", k)
	}
	if k := kills[1]; k.Pid != 21 || k.TaskMemcg != "" || k.OOMMemcg != "" || !k.Memcg || k.Reason != txtMemcgReason {
		t.Errorf("second kill (sacrificed child, no Task in): %+v", k)
	}
}

// A global "Kill process" line after a memcg "Task in" belongs to another
// report.
func TestLegacyScopeMismatch(t *testing.T) {
	kills := feed(NewParser(),
		rec(1, 0, "Task in /a killed as a result of limit of /a"),
		rec(2, 1, "Out of memory: Kill process 10 (x) score 9 or sacrifice child"),
		rec(3, 2, "Killed process 10 (x) total-vm:1kB, anon-rss:1kB, file-rss:0kB"))
	if len(kills) != 1 || kills[0].TaskMemcg != "" || !kills[0].Global || kills[0].Memcg {
		t.Errorf("kills = %+v, want one global kill without /a", kills)
	}
}

func TestExitingVictimIsNoKill(t *testing.T) {
	p := NewParser()
	kills := feed(p,
		rec(1, 0, sum100),
		rec(2, 1, "Memory cgroup out of memory: OOM victim 100 (app) is already exiting. Skip killing the task"),
		rec(3, 2, "oom_reaper: reaped process 100 (app), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB"))
	if len(kills) != 0 {
		t.Fatalf("kills = %+v, want none", kills)
	}
	// The chosen pid was not killed; a later kill of another pid gets no
	// context from it.
	kills = feed(p, rec(4, time.Second, kill200))
	if len(kills) != 1 || kills[0].Enriched {
		t.Errorf("kills = %+v, want one bare kill", kills)
	}
}

func TestLostDropsContext(t *testing.T) {
	p := NewParser()
	feed(p, rec(1, 0, sum100))
	p.Lost()
	kills := feed(p, rec(9, 1, kill100))
	if len(kills) != 1 || kills[0].Enriched || kills[0].TaskMemcg != "" {
		t.Errorf("kills = %+v, want one bare kill", kills)
	}
}

func TestContextExpires(t *testing.T) {
	kills := feed(NewParser(),
		rec(1, 0, "Task in /a killed as a result of limit of /a"),
		rec(2, contextTTL+time.Second, "Memory cgroup out of memory: Kill process 10 (x) score 9 or sacrifice child"),
		rec(3, contextTTL+time.Second+1, "Killed process 10 (x) total-vm:1kB, anon-rss:1kB, file-rss:0kB"))
	if len(kills) != 1 || kills[0].TaskMemcg != "" {
		t.Errorf("kills = %+v, want one kill without the stale /a", kills)
	}
}

// Userspace can write anything to /dev/kmsg but not as facility 0.
func TestForgedKillIgnored(t *testing.T) {
	r := rec(1, 0, kill100)
	r.Facility = 1
	if kills := feed(NewParser(), r); len(kills) != 0 {
		t.Errorf("kills = %+v, want none from facility 1", kills)
	}
}

func TestGroupKill(t *testing.T) {
	kills := feed(NewParser(),
		rec(1, 0, sum100),
		rec(2, 1*time.Millisecond, kill100),
		rec(3, 2*time.Millisecond, "Tasks in /pod/c1 are going to be killed due to memory.oom.group set"),
		rec(4, 3*time.Millisecond, kill100), // the victim again: no second Kill
		rec(5, 4*time.Millisecond, kill200),
		rec(6, 5*time.Millisecond, kill200), // a thread of a member
		// Next OOM, summary rate-limited, well after the group: not a member.
		rec(7, 2*time.Second, kill300))
	if len(kills) != 3 {
		t.Fatalf("got %d kills, want 3: %+v", len(kills), kills)
	}
	if k := kills[0]; k.GroupKill || k.TaskMemcg != "/pod/c1" {
		t.Errorf("victim: %+v", k)
	}
	if k := kills[1]; !k.GroupKill || k.OOMGroup != "/pod/c1" || k.OOMMemcg != "/pod" || k.TaskMemcg != "" || k.Pid != 200 {
		t.Errorf("member: %+v", k)
	}
	if k := kills[2]; k.GroupKill || k.Enriched {
		t.Errorf("later kill: %+v", k)
	}
}

func TestSharingSameMemory(t *testing.T) {
	kills := feed(NewParser(),
		rec(1, 0, "Task in /a killed as a result of limit of /a"),
		rec(2, 1, "Memory cgroup out of memory: Kill process 10 (x) score 9 or sacrifice child"),
		rec(3, 2, "Killed process 10 (x) total-vm:1kB, anon-rss:1kB, file-rss:0kB"),
		rec(4, 3, "Kill process 11 (y) sharing same memory"),
		rec(5, time.Minute, "Kill process 12 (z) sharing same memory")) // no report: ignored
	if len(kills) != 2 {
		t.Fatalf("kills = %+v, want 2", kills)
	}
	if k := kills[1]; k.Pid != 11 || k.Comm != "y" || !k.SharedMM || k.OOMMemcg != "/a" || !k.Memcg || k.TaskMemcg != "" {
		t.Errorf("sharing kill: %+v", k)
	}
}

// Fragments: a summary the kernel could not store as one record, in the
// 5.10+ style ('-' then 'c') and the 3.x style ('c' then '+').
func TestFragments(t *testing.T) {
	for _, flags := range [][3]byte{{'-', 'c', 'c'}, {'c', '+', '+'}} {
		parts := []string{
			"oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0",
			",oom_memcg=/pod,task_memcg=/pod/c1",
			",task=app,pid=100,uid=0",
		}
		p := NewParser()
		for i, part := range parts {
			r := rec(uint64(i+1), time.Duration(i), part)
			r.Flag = flags[i]
			if k, ok := p.Feed(r); ok {
				t.Fatalf("fragment produced a kill: %+v", k)
			}
		}
		kills := feed(p, rec(4, 4, kill100))
		if len(kills) != 1 || kills[0].TaskMemcg != "/pod/c1" || kills[0].OOMMemcg != "/pod" {
			t.Errorf("flags %c: kills = %+v, want the reassembled summary merged", flags, kills)
		}
	}
	// "Task in" in two pieces.
	a := rec(1, 0, "Task in /a")
	a.Flag = 'c'
	b := rec(2, 1, " killed as a result of limit of /p")
	b.Flag = '+'
	kills := feed(NewParser(), a, b,
		rec(3, 2, "Memory cgroup out of memory: Kill process 10 (x) score 9 or sacrifice child"),
		rec(4, 3, "Killed process 10 (x) total-vm:1kB, anon-rss:1kB, file-rss:0kB"))
	if len(kills) != 1 || kills[0].TaskMemcg != "/a" || kills[0].OOMMemcg != "/p" {
		t.Errorf("kills = %+v, want Task in reassembled", kills)
	}
	// A fragment whose rest never comes does not swallow the next line.
	kills = feed(NewParser(), rec(1, 0, "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null)"), rec(2, 1, kill100))
	if len(kills) != 1 || kills[0].Pid != 100 || kills[0].Enriched {
		t.Errorf("kills = %+v, want one bare kill", kills)
	}
}
