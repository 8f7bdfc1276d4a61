// Package testenv gives tests real kernel resources with guaranteed cleanup:
// cgroups under a unique name, processes that allocate memory on command,
// and the rule that a missing prerequisite is a skip on a developer's
// machine but a failure when CI=true.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/cgroup"
)

// Skip skips the test with reason, or fails it when CI=true: on CI every
// prerequisite is installed, so a skip there would hide a missing test.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("prerequisite missing under CI=true: %s", reason)
	}
	t.Skip(reason)
}

// RequireRoot skips (or, on CI, fails) unless running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root")
	}
}

// V1MemoryRoot is where this machine mounts the v1 memory controller.
const V1MemoryRoot = "/sys/fs/cgroup/memory"

// V1FreezerRoot is the v1 freezer mount.
const V1FreezerRoot = "/sys/fs/cgroup/freezer"

// RequireV1 returns the v1 memory hierarchy, or skips (fails on CI).
func RequireV1(t testing.TB) *cgroup.V1 {
	t.Helper()
	RequireRoot(t)
	m, err := cgroup.Open(V1MemoryRoot)
	if err != nil {
		Skip(t, "needs a cgroup v1 memory hierarchy: "+err.Error())
	}
	v1, ok := m.(*cgroup.V1)
	if !ok {
		Skip(t, "needs a cgroup v1 memory hierarchy, found "+m.Version().String())
	}
	return v1
}

// Cgroup is a test's own cgroup sub-tree in the v1 memory (and freezer)
// hierarchies, removed with everything in it when the test ends.
type Cgroup struct {
	Mem *cgroup.FS // rooted at the memory hierarchy's mount point
	Rel string     // the test's sub-tree, e.g. /oomguard-test-TestX-1234
}

// NewCgroup makes a uniquely named empty cgroup at the top of the v1 memory
// and freezer hierarchies. Cleanup kills every process left in it (only
// processes the test started can be there) and removes it, children first.
func NewCgroup(t testing.TB) *Cgroup {
	t.Helper()
	RequireV1(t)
	name := fmt.Sprintf("/oomguard-test-%s-%d-%d", sanitize(t.Name()), os.Getpid(), time.Now().UnixNano()%1e6)
	cg := &Cgroup{Mem: &cgroup.FS{Root: V1MemoryRoot}, Rel: name}
	if err := cg.Mem.Mkdir(name); err != nil {
		t.Fatalf("create test cgroup: %v", err)
	}
	t.Cleanup(func() { cg.Remove(t) })
	return cg
}

func sanitize(s string) string {
	s = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, s)
	if len(s) > 40 {
		s = s[:40]
	}
	return s
}

// Path is the absolute path of a sub-cgroup in the memory hierarchy.
func (c *Cgroup) Path(sub string) string { return c.Mem.Path(c.Rel+"/"+sub, "") }

// Child creates a sub-cgroup (and the same path in the freezer hierarchy)
// with the given limit in bytes (0: none) and returns its relative path.
func (c *Cgroup) Child(t testing.TB, sub string, limit uint64) string {
	t.Helper()
	rel := filepath.Join(c.Rel, sub)
	if err := c.Mem.Mkdir(rel); err != nil {
		t.Fatalf("create cgroup %s: %v", rel, err)
	}
	if err := os.MkdirAll(filepath.Join(V1FreezerRoot, rel), 0o755); err != nil {
		t.Fatalf("create freezer cgroup %s: %v", rel, err)
	}
	if limit > 0 {
		c.SetLimit(t, rel, limit)
	}
	return rel
}

// SetLimit writes memory.limit_in_bytes.
func (c *Cgroup) SetLimit(t testing.TB, rel string, limit uint64) {
	t.Helper()
	if err := c.Mem.WriteFile(rel, "memory.limit_in_bytes", fmt.Sprint(limit)); err != nil {
		t.Fatalf("set limit: %v", err)
	}
}

// Remove kills what is left in the sub-tree and removes it in both
// hierarchies. Safe to call twice.
func (c *Cgroup) Remove(t testing.TB) {
	for _, root := range []string{V1FreezerRoot, V1MemoryRoot} {
		fs := &cgroup.FS{Root: root}
		if !fs.Exists(c.Rel) {
			continue
		}
		if root == V1FreezerRoot {
			thawAll(fs, c.Rel)
		}
		var dirs []string
		_ = fs.Walk(c.Rel, func(rel string) error { dirs = append(dirs, rel); return nil })
		for attempt := 0; attempt < 100; attempt++ {
			pids, _ := fs.Procs(c.Rel, true)
			if len(pids) == 0 {
				break
			}
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			time.Sleep(20 * time.Millisecond)
		}
		for i := len(dirs) - 1; i >= 0; i-- {
			var err error
			for attempt := 0; attempt < 50; attempt++ {
				if err = fs.Rmdir(dirs[i]); err == nil || os.IsNotExist(err) {
					err = nil
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil {
				t.Errorf("cleanup: remove cgroup %s: %v", dirs[i], err)
			}
		}
	}
}

func thawAll(fs *cgroup.FS, rel string) {
	_ = fs.Walk(rel, func(cg string) error {
		_ = fs.WriteFile(cg, "freezer.state", "THAWED")
		return nil
	})
}

// Start runs cmd with its process placed in cgroup rel before it executes
// anything: the child is started stopped behind a pipe, moved, then released.
// The process is killed and reaped at test end if still running.
func (c *Cgroup) Start(t testing.TB, rel string, cmd *exec.Cmd) {
	t.Helper()
	if err := StartIn(c.Mem, rel, cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
}

// WaitExit waits up to d for cmd, started by the test, to end, and returns
// how it ended; still running after d fails the test.
func WaitExit(t testing.TB, cmd *exec.Cmd, d time.Duration) syscall.WaitStatus {
	t.Helper()
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
		return cmd.ProcessState.Sys().(syscall.WaitStatus)
	case <-time.After(d):
		t.Fatalf("pid %d still running after %v", cmd.Process.Pid, d)
	}
	return 0
}

// KernelOOMKills is the kernel's own oom_kill count of a v1 cgroup (rel
// to V1MemoryRoot), read from memory.oom_control directly: the ground
// truth a test checks the guard against, also when the test-only switch
// (OOMGUARD_HIDE_FEATURES=oom_kill) hides the counter from the guard.
func KernelOOMKills(t testing.TB, rel string) uint64 {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(V1MemoryRoot, rel, "memory.oom_control"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("%s/memory.oom_control has no oom_kill counter: this test needs a 4.13+ kernel", rel)
	return 0
}
