package kmsg

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The samples in testdata are kept as their sources published them: raw
// /dev/kmsg records, or dmesg / syslog / journalctl text, sometimes quoted in
// a mail. loadSample undoes those decorations to get back the records the
// kernel stored; it is test code because production reads /dev/kmsg only.
var (
	reKmsg   = regexp.MustCompile(`^\d+,\d+,\d+,[^;]*;`)
	reQuote  = regexp.MustCompile(`^> ?`)
	reSyslog = regexp.MustCompile(`^[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d \S+ (\S+?)(\[\d+\])?: `)
	reStamp  = regexp.MustCompile(`^\[\s*(\d+)\.(\d{6})\] ?`)
	reStampT = regexp.MustCompile(`^\[[A-Z][a-z]{2} [A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d \d{4}\] ?`)
	reCaller = regexp.MustCompile(`^\[\s*[TC]\d+\] ?`)
)

// loadSample returns the records of a testdata file ('#' lines are its
// header and notes).
func loadSample(t testing.TB, name string) []Record {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var recs []Record
	var raw []string // the current /dev/kmsg record's lines
	flush := func() {
		if raw == nil {
			return
		}
		r, err := ParseRecord([]byte(strings.Join(raw, "\n") + "\n"))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		recs = append(recs, r)
		raw = nil
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	seq := uint64(1)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		if raw != nil && strings.HasPrefix(line, " ") {
			raw = append(raw, line)
			continue
		}
		flush()
		if reKmsg.MatchString(line) {
			raw = []string{line}
			continue
		}
		recs = append(recs, textRecord(line, seq))
		seq++
	}
	flush()
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return recs
}

// textRecord turns one line of dmesg-like text into the record it came from.
func textRecord(line string, seq uint64) Record {
	r := Record{Seq: seq, Flag: '-'}
	line = reQuote.ReplaceAllString(line, "")
	if m := reSyslog.FindStringSubmatch(line); m != nil {
		if m[1] != "kernel" {
			r.Facility = 3 // LOG_DAEMON: not the kernel
		}
		line = line[len(m[0]):]
	}
	if m := reStamp.FindStringSubmatch(line); m != nil {
		s, _ := strconv.ParseInt(m[1], 10, 64)
		us, _ := strconv.ParseInt(m[2], 10, 64)
		r.Monotonic = time.Duration(s)*time.Second + time.Duration(us)*time.Microsecond
		line = line[len(m[0]):]
	}
	line = reStampT.ReplaceAllString(line, "")
	line = reCaller.ReplaceAllString(line, "")
	r.Text = line
	return r
}

func feedAll(recs []Record) []Kill {
	p := NewParser()
	var kills []Kill
	for _, r := range recs {
		if k, ok := p.Feed(r); ok {
			kills = append(kills, k)
		}
	}
	return kills
}

// want is what a sample's kill must say. Every field is compared: a zero
// value asserts that the parser did not make something up.
type want struct {
	pid                 int
	comm                string
	uid                 int
	memcg, global       bool
	constraint          string
	oomMemcg, taskMemcg string
	anonKB              uint64
	group               string // OOMGroup; GroupKill is expected iff set
	enriched            bool
}

func checkKill(t *testing.T, i int, got Kill, w want) {
	t.Helper()
	type view struct {
		Pid                 int
		Comm                string
		UID                 int
		Memcg, Global       bool
		Constraint          string
		OOMMemcg, TaskMemcg string
		AnonKB              uint64
		GroupKill           bool
		OOMGroup            string
		Enriched            bool
	}
	g := view{got.Pid, got.Comm, got.UID, got.Memcg, got.Global, got.Constraint, got.OOMMemcg,
		got.TaskMemcg, got.AnonRSSKB, got.GroupKill, got.OOMGroup, got.Enriched}
	e := view{w.pid, w.comm, w.uid, w.memcg, w.global, w.constraint, w.oomMemcg,
		w.taskMemcg, w.anonKB, w.group != "", w.group, w.enriched}
	if g != e {
		t.Errorf("kill %d:\n got %+v\nwant %+v", i, g, e)
	}
}

const (
	aksTask = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod10d16a28_60ff_475f_a631_510d9792219f.slice/cri-containerd-178ec18073cc6ac7be2de8d9869daf162a6349dd056b6535849112c53ec3102a.scope"
	podOOM  = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod94eb36cd_29e1_478b_b365_4cb5dfc7d6fb.slice"
	podTask = podOOM + "/cri-containerd-46b3e0a4df44b752b841aecca454e6e78995d567912a84950390bae6f6777a63.scope"
	docker1 = "/docker/2e088fe462e25e60be1dafafe2c05c47bda1a97978648d10ad2b7484fc0b8f50"
	docker2 = "/docker/6c6fcab8562fd3150854986b78552c732f234fd405b624207b8843528a145e70"
)

// groupMember is a member of the 5.0 sample's /test1 group kill.
func groupMember(pid int, comm string, anon uint64) want {
	return want{pid: pid, comm: comm, uid: -1, memcg: true, constraint: "CONSTRAINT_NONE",
		oomMemcg: "/test1", anonKB: anon, group: "/test1", enriched: true}
}

// The v2 VM sample's groups, and what its kills must say.
const (
	vmGroup1 = "/oomguard-test-TestV2OOMGroup_kernel_group_kill_is_one_-96-340140/c"
	vmGroup2 = "/oomguard-test-TestV2OOMGroup_kernel_group_kill_is_one_-96-185820/c"
)

func vmVictim(group string, pid int, anon uint64) want {
	return want{pid: pid, comm: "guard.test", uid: 0, memcg: true, constraint: "CONSTRAINT_MEMCG",
		oomMemcg: group, taskMemcg: group, anonKB: anon, enriched: true}
}

func vmMember(group string, pid int, anon uint64) want {
	return want{pid: pid, comm: "guard.test", uid: 0, memcg: true, constraint: "CONSTRAINT_MEMCG",
		oomMemcg: group, anonKB: anon, group: group, enriched: true}
}

var sampleWants = map[string][]want{
	"cadvisor-oomparser-test.txt": {
		// A kill line right after an unrelated start line: nothing to merge.
		{pid: 19667, comm: "evil-program2", uid: -1, anonKB: 1414008},
		{pid: 13536, comm: "memorymonster", uid: -1, memcg: true, oomMemcg: "/mem2", taskMemcg: "/mem2", anonKB: 920, enriched: true},
		{pid: 1532, comm: "badsysprogram", uid: -1, global: true, anonKB: 1595164, enriched: true},
		{pid: 1381, comm: "gunpowder-memho", uid: -1, memcg: true, oomMemcg: docker1, taskMemcg: docker1, anonKB: 18624, enriched: true},
		{pid: 1667, comm: "gunpowder-memho", uid: -1, memcg: true, oomMemcg: docker2, taskMemcg: docker2, anonKB: 248180, enriched: true},
	},
	"kubernetes-56891-centos7.txt": {
		// The child of the chosen 24572; its report's "Task in" is lost.
		{pid: 28438, comm: "java", uid: -1, memcg: true, anonKB: 466160, enriched: true},
	},
	"apache-doris-3525-rhel7.txt": {
		{pid: 18177, comm: "palo_be", uid: 0, memcg: true, anonKB: 45563572, enriched: true},
	},
	"athou-commafeed-792-global.txt": {
		{pid: 1312, comm: "java", uid: -1, global: true, anonKB: 256140, enriched: true},
	},
	"ssup2-blog-4x-memcg.txt": {
		{pid: 27881, comm: "stress", uid: -1, memcg: true, anonKB: 7152284, enriched: true},
	},
	"reportportal-kubernetes-203-ubuntu-5.4.txt": {
		{pid: 63214, comm: "uwsgi", uid: 0, memcg: true, anonKB: 164992},
	},
	"linux-mm-2019-oom-group-5.0.txt": {
		{pid: 9188, comm: "a.out", uid: 0, memcg: true, constraint: "CONSTRAINT_NONE", oomMemcg: "/test1", taskMemcg: "/test1", anonKB: 10324, enriched: true},
		groupMember(1, "systemd", 1228),
		groupMember(9182, "a.out", 76),
		groupMember(9183, "a.out", 6228),
		groupMember(9184, "a.out", 6228),
		groupMember(9185, "a.out", 6228),
		groupMember(9186, "a.out", 4180),
		groupMember(9187, "a.out", 4180),
		groupMember(9189, "a.out", 6228),
		groupMember(9190, "a.out", 552),
		groupMember(9191, "a.out", 4180),
		groupMember(9192, "a.out", 1080),
	},
	"aks-oom-group-duplicate-victim.txt": {
		{pid: 68061, comm: "stress", uid: 0, memcg: true, constraint: "CONSTRAINT_MEMCG", oomMemcg: "/kubepods.slice", taskMemcg: aksTask, anonKB: 2884696, enriched: true},
	},
	"pod-oom-group-systemd-driver.txt": {
		{pid: 22609, comm: "node", uid: 0, memcg: true, constraint: "CONSTRAINT_MEMCG", oomMemcg: podOOM, taskMemcg: podTask, anonKB: 4116684, enriched: true},
	},
	"global-oom-group-truncated-summary.txt": {
		{pid: 10843, comm: "prometheus-conf", uid: 1000, global: true, anonKB: 5064},
	},
	"global-oom-systemd-service.txt": {
		{pid: 1306511, comm: "uvicorn", uid: 1001, global: true, constraint: "CONSTRAINT_NONE", taskMemcg: "/system.slice/newshive.service", anonKB: 595900, enriched: true},
	},
	"kernelctf-global-root-memcg.txt": {
		{pid: 185, comm: "enomem-1", uid: 1000, global: true, constraint: "CONSTRAINT_NONE", taskMemcg: "/", anonKB: 3319168, enriched: true},
	},
	"firefox-summaries-without-kill-lines.txt": nil,
	"dynatrace-npd-global-kill-line.txt": {
		{pid: 3103923, comm: "stress-ng-vm", uid: 0, global: true, anonKB: 14369596},
	},
	// The v2 VM's kernel (Debian 6.1): two group kills whose scans print
	// members again under a thread's pid (the sample's notes); the task
	// table makes them one Kill each.
	"self-linux-6.1-cgroup-v2-oom-group.kmsg": {
		vmVictim(vmGroup1, 115, 59556), vmMember(vmGroup1, 101, 2840), vmMember(vmGroup1, 102, 2804),
		vmVictim(vmGroup2, 373, 59776), vmMember(vmGroup2, 362, 2832), vmMember(vmGroup2, 363, 2788),
	},
	// This machine's own kernel (Linux 6.18, cgroup v1), captured by
	// TestRealKernelOOM with OOMGUARD_KMSG_CAPTURE set.
	"self-linux-6.18-cgroup-v1.kmsg": {
		{pid: selfPid, comm: "kmsg.test", uid: 0, memcg: true, constraint: "CONSTRAINT_MEMCG", oomMemcg: selfCgroup, taskMemcg: selfCgroup, anonKB: selfAnon, enriched: true},
	},
}

// TestSamples runs the parser over every real sample in testdata and checks
// every kill it reports, and that it reports no other.
func TestSamples(t *testing.T) {
	files, err := filepath.Glob("testdata/*.*")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, path := range files {
		name := filepath.Base(path)
		seen[name] = true
		wants, ok := sampleWants[name]
		if !ok {
			t.Errorf("%s: sample without expectations", name)
			continue
		}
		t.Run(name, func(t *testing.T) {
			kills := feedAll(loadSample(t, name))
			for i := 0; i < len(kills) || i < len(wants); i++ {
				switch {
				case i >= len(wants):
					t.Errorf("unexpected kill %d: %+v", i, kills[i])
				case i >= len(kills):
					t.Errorf("missing kill %d: %+v", i, wants[i])
				default:
					checkKill(t, i, kills[i], wants[i])
				}
			}
		})
	}
	for name := range sampleWants {
		if !seen[name] {
			t.Errorf("expected sample %s is missing from testdata", name)
		}
	}
}

// TestSamplesAnyStart feeds every sample from every starting record: a
// reader that opens in the middle of a report must still never report a kill
// that is not in the sample, nor lose the kill lines after its start.
func TestSamplesAnyStart(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.*")
	for _, path := range files {
		name := filepath.Base(path)
		recs := loadSample(t, name)
		all := map[int]bool{}
		for _, k := range feedAll(recs) {
			all[k.Pid] = true
		}
		// A start past a report's task table loses what tells a thread's
		// line of a group scan from a member's: the thread's pid is then
		// a Kill (reconcile places it), but only one a kill line printed.
		for _, r := range recs {
			if k, ok := killLine(r.Text); ok {
				all[k.Pid] = true
			}
		}
		for start := range recs {
			for _, k := range feedAll(recs[start:]) {
				if !all[k.Pid] {
					t.Errorf("%s from record %d: kill of pid %d not in the full run", name, start, k.Pid)
				}
			}
		}
	}
}
