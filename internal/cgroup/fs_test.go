package cgroup_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/kernel"
	"github.com/oom-guard/oom-guard/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.RunHogIfRequested()
	os.Exit(m.Run())
}

// A symlink inside the root must not lead the guard out of it.
func TestFSRefusesEscape(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "memory.max"), []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "evil")); err != nil {
		t.Fatal(err)
	}
	fs := &cgroup.FS{Root: root}
	if _, err := fs.ReadUint("/evil", "memory.max"); err == nil {
		t.Fatal("read through a symlink out of the root")
	}
	if _, err := fs.ReadUint("/../"+filepath.Base(outside), "memory.max"); !errors.Is(err, cgroup.ErrEscape) {
		t.Fatalf("want ErrEscape, got %v", err)
	}
}

func TestOpenRejectsNonCgroup(t *testing.T) {
	if _, err := cgroup.Open(t.TempDir()); err == nil {
		t.Fatal("a plain directory was accepted as a memory cgroup")
	}
}

// Against the real v1 hierarchy: limits, usage, stat, procs and counters of a
// cgroup this test creates and fills.
func TestV1RealCgroup(t *testing.T) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "c", 64<<20)
	mem, err := cgroup.Open(testenv.V1MemoryRoot)
	if err != nil {
		t.Fatal(err)
	}
	if mem.Version() != cgroup.VersionV1 {
		t.Fatalf("version %v", mem.Version())
	}
	if lim, err := mem.Limit(rel); err != nil || lim != 64<<20 {
		t.Fatalf("limit %d, %v", lim, err)
	}
	if lim, err := mem.Limit(cg.Rel); err != nil || lim != cgroup.Unlimited {
		t.Fatalf("unlimited parent reads %d, %v", lim, err)
	}
	dir := t.TempDir()
	cmd := testenv.HogCommand(testenv.HogSpec{Kind: "file", MiB: 16, Dir: dir, Hold: true})
	cg.Start(t, rel, cmd)
	var st cgroup.Stat
	for i := 0; i < 200; i++ {
		if st, err = mem.Stat(rel); err != nil {
			t.Fatal(err)
		}
		if st.Reclaimable >= 12<<20 {
			break
		}
		sleepMs(10)
	}
	if st.Reclaimable < 12<<20 {
		t.Fatalf("16 MiB written, reclaimable page cache only %d", st.Reclaimable)
	}
	if u, err := mem.Usage(rel); err != nil || u < 12<<20 {
		t.Fatalf("usage %d, %v", u, err)
	}
	pids, err := mem.FS().Procs(cg.Rel, true)
	if err != nil || len(pids) != 1 || pids[0] != cmd.Process.Pid {
		t.Fatalf("procs %v, %v; want [%d]", pids, err, cmd.Process.Pid)
	}
	if n, err := mem.OOMKills(rel); kernel.HasOOMKillCounter(mem.FS().Root) && (err != nil || n != 0) {
		t.Fatalf("oom kills %d, %v", n, err)
	} else if !kernel.HasOOMKillCounter(mem.FS().Root) && !errors.Is(err, cgroup.ErrNoOOMKillCounter) {
		t.Fatalf("without the oom_kill counter (before 4.13): %d, %v; want ErrNoOOMKillCounter", n, err)
	}
	if err := mem.SetSoftLimit(rel, 32<<20); err != nil {
		t.Fatal(err)
	}
	if v, err := mem.SoftLimit(rel); err != nil || v != 32<<20 {
		t.Fatalf("soft limit %d, %v", v, err)
	}
	if err := mem.Reclaim(rel, 0, time.Second); err != nil {
		t.Fatalf("force_empty: %v", err)
	}
	if st, _ = mem.Stat(rel); st.Reclaimable > 4<<20 {
		t.Fatalf("after force_empty %d bytes of cache remain", st.Reclaimable)
	}
	if _, err := mem.Usage(cg.Rel + "/gone"); !cgroup.IsNotExist(err) {
		t.Fatalf("missing cgroup: %v", err)
	}
}

// A Handle's kept-open files read fresh values on every read.
func TestHandleRereads(t *testing.T) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "h", 64<<20)
	mem, err := cgroup.Open(testenv.V1MemoryRoot)
	if err != nil {
		t.Fatal(err)
	}
	h, err := mem.Handle(rel)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	before, err := h.Usage()
	if err != nil {
		t.Fatal(err)
	}
	cg.Start(t, rel, testenv.HogCommand(testenv.HogSpec{MiB: 16, Hold: true}))
	var after uint64
	for i := 0; i < 200 && after < before+12<<20; i++ {
		sleepMs(5)
		if after, err = h.Usage(); err != nil {
			t.Fatal(err)
		}
	}
	if after < before+12<<20 {
		t.Fatalf("usage via handle %d -> %d after a 16 MiB allocation", before, after)
	}
	if lim, err := h.Limit(); err != nil || lim != 64<<20 {
		t.Fatalf("limit %d, %v", lim, err)
	}
	cg.SetLimit(t, rel, 96<<20)
	if lim, err := h.Limit(); err != nil || lim != 96<<20 {
		t.Fatalf("limit after change %d, %v", lim, err)
	}
	if st, err := h.Stat(); err != nil || st.Text == "" {
		t.Fatalf("stat %+v, %v", st, err)
	}
}

// force_empty with writers dirtying page cache keeps the writer in the
// kernel for seconds (3.5 s measured here): the budget must cut it short.
func TestReclaimIsBounded(t *testing.T) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "busy", 2<<30)
	dir, err := os.MkdirTemp("/var/tmp", "oomguard-reclaim-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	for i := 0; i < 2; i++ {
		cg.Start(t, rel, testenv.HogCommand(testenv.HogSpec{Kind: "file", MiB: 8000, Dir: dir}))
	}
	mem, err := cgroup.Open(testenv.V1MemoryRoot)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // let the writers fill the page cache
	const budget = 20 * time.Millisecond
	for attempt := 0; attempt < 5; attempt++ {
		start := time.Now()
		err := mem.Reclaim(rel, 0, budget)
		took := time.Since(start)
		// The kernel sees the signal between reclaim passes; one pass
		// waiting on writeback can take hundreds of milliseconds on a
		// busy disk, but not the many seconds of an unbounded run.
		if took > 3*time.Second {
			t.Fatalf("reclaim with a %v budget took %v (%v)", budget, took, err)
		}
		if errors.Is(err, cgroup.ErrBudget) {
			t.Logf("interrupted after %v", took)
			return
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("reclaim always finished within its budget: the bound was never exercised")
}
