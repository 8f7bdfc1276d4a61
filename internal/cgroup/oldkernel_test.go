package cgroup

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fixture reads a testdata file without its "#" header (which names the
// file's source).
func fixture(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if !bytes.HasPrefix(line, []byte("#")) {
			out = append(out, line)
		}
	}
	return bytes.Join(out, nil)
}

// oldTree is a v1 cgroup directory holding a kernel version's files.
func oldTree(t *testing.T, version string) *V1 {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"memory.oom_control", "memory.stat"} {
		src := filepath.Join("testdata", "v1-"+version, f)
		if _, err := os.Stat(src); err != nil {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, f), fixture(t, src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return &V1{fs: &FS{Root: dir}}
}

// 3.10 to 4.12: memory.oom_control has no oom_kill; OOMKills says so
// rather than reading 0 (which would hide every kernel kill), and
// under_oom still reads.
func TestOOMControl310(t *testing.T) {
	if !hasOpenat2ForTempDirs(t) {
		return
	}
	m := oldTree(t, "3.10")
	if _, err := m.OOMKills("/"); !errors.Is(err, ErrNoOOMKillCounter) {
		t.Fatalf("OOMKills on 3.10's file: %v, want ErrNoOOMKillCounter", err)
	}
	if under, err := m.UnderOOM("/"); err != nil || !under {
		t.Fatalf("under_oom %v, %v; want true", under, err)
	}
}

func TestOOMControl414(t *testing.T) {
	if !hasOpenat2ForTempDirs(t) {
		return
	}
	m := oldTree(t, "4.14")
	if n, err := m.OOMKills("/"); err != nil || n != 3 {
		t.Fatalf("OOMKills on 4.14's file: %d, %v; want 3", n, err)
	}
}

// 3.10's memory.stat (the seed's own event) has the total_ file counters
// the guard's reclaimable figure needs, and reads whole into the event.
func TestStat310(t *testing.T) {
	if !hasOpenat2ForTempDirs(t) {
		return
	}
	m := oldTree(t, "3.10")
	st, err := m.Stat("/")
	if err != nil {
		t.Fatal(err)
	}
	if st.Reclaimable != 0 || !bytes.HasPrefix([]byte(st.Text), []byte("cache 20480|rss 205938688|rss_huge 199229440|")) {
		t.Fatalf("stat %+v", st)
	}
	data := fixture(t, "testdata/v1-3.10/memory.stat")
	kv, err := ParseFlatKeyed(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"total_inactive_file", "total_active_file", "total_rss", "hierarchical_memory_limit"} {
		if _, ok := kv[key]; !ok {
			t.Errorf("3.10 memory.stat lacks %s", key)
		}
	}
	for _, key := range []string{"shmem", "workingset_refault_file", "total_shmem"} {
		if _, ok := kv[key]; ok {
			t.Errorf("3.10 memory.stat has %s: not 3.10's", key)
		}
	}
}

// The fixtures live on tmpfs: the plain-open fallback (no openat2) refuses
// anything not on a cgroup file system, so under the old-kernel surface
// these parser tests have nothing to read.
func hasOpenat2ForTempDirs(t *testing.T) bool {
	t.Helper()
	if os.Getenv("OOMGUARD_OLDKERNEL") != "" {
		t.Skip("the fixtures are on tmpfs, which the open(2) fallback refuses (see TestOpenCheckedRefusesOtherFS)")
		return false
	}
	return true
}

// A kernel that refuses force_empty (3.8 to 3.15: EBUSY for a cgroup with
// tasks or children; every kernel: EINVAL for the root) gives ErrNoReclaim,
// not an error; after EBUSY on a cgroup with tasks it is not asked again.
func TestForceEmptyRefused(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte("4242\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	asked := 0
	m := &V1{fs: &FS{Root: dir}, writeBounded: func(rel, file, data string, budget time.Duration) error {
		asked++
		return &os.PathError{Op: "write", Path: file, Err: unix.EBUSY}
	}}
	if os.Getenv("OOMGUARD_OLDKERNEL") != "" {
		m.fs.Root = "/sys/fs/cgroup/memory" // a cgroup file system, as the fallback wants; only cgroup.procs is read
	}
	for i := 0; i < 3; i++ {
		err := m.Reclaim("/", 0, 10*time.Millisecond)
		if !errors.Is(err, ErrNoReclaim) {
			t.Fatalf("refused force_empty: %v, want ErrNoReclaim", err)
		}
	}
	if m.fs.Root == dir && asked != 1 {
		t.Fatalf("asked %d times, want once: the refusal is the kernel's, for every cgroup with tasks", asked)
	}
	m = &V1{fs: m.fs, writeBounded: func(string, string, string, time.Duration) error {
		return unix.EINVAL
	}}
	if err := m.Reclaim("/", 0, time.Millisecond); !errors.Is(err, ErrNoReclaim) {
		t.Fatalf("EINVAL: %v", err)
	}
}

// The real kernel refuses force_empty of its root cgroup (EINVAL).
func TestForceEmptyRootRefusedByKernel(t *testing.T) {
	mem, err := Open("/sys/fs/cgroup/memory")
	if err != nil {
		t.Skip(err)
	}
	if err := mem.Reclaim("/", 0, 10*time.Millisecond); !errors.Is(err, ErrNoReclaim) {
		t.Fatalf("force_empty of the root: %v, want ErrNoReclaim", err)
	}
}

// Without openat2 the plain open checks that what it opened is a cgroup
// file: a file on another file system (here tmpfs, as a bind mount or a
// symlink into the hierarchy would lead to) is refused with EXDEV.
func TestOpenCheckedRefusesOtherFS(t *testing.T) {
	other := filepath.Join(t.TempDir(), "memory.limit_in_bytes")
	if err := os.WriteFile(other, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if fd, err := openChecked(other, unix.O_RDONLY|unix.O_CLOEXEC); err != unix.EXDEV {
		if err == nil {
			unix.Close(fd)
		}
		t.Fatalf("open of a tmpfs file: %v, want EXDEV", err)
	}
	fd, err := openChecked("/sys/fs/cgroup/memory/memory.usage_in_bytes", unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		t.Skipf("no v1 memory hierarchy here: %v", err)
	}
	unix.Close(fd)
}
