package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"strconv"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/cgroup"
)

// V2Root is where a unified host (and the VM of internal/testenv/vm)
// mounts cgroup2.
const V2Root = "/sys/fs/cgroup"

// RequireV2 returns the cgroup v2 hierarchy with the memory controller,
// or skips (fails on CI).
func RequireV2(t testing.TB) *cgroup.V2 {
	t.Helper()
	RequireRoot(t)
	m, err := cgroup.Open(V2Root)
	if err != nil {
		Skip(t, "needs a cgroup v2 hierarchy with the memory controller: "+err.Error())
	}
	v2, ok := m.(*cgroup.V2)
	if !ok {
		Skip(t, "needs a cgroup v2 hierarchy, found "+m.Version().String())
	}
	return v2
}

// V2Cgroup is a test's own sub-tree of the cgroup v2 hierarchy, removed
// with everything in it when the test ends. Its top delegates the memory
// controller to its children; v2 allows processes only in leaves of a
// controller's tree, so processes go into children (Child).
type V2Cgroup struct {
	FS  *cgroup.FS // rooted at the cgroup2 mount
	Rel string     // the test's sub-tree, e.g. /oomguard-test-TestX-1234
}

// NewV2Cgroup makes a uniquely named cgroup at the top of the v2
// hierarchy with +memory in its cgroup.subtree_control.
func NewV2Cgroup(t testing.TB) *V2Cgroup {
	t.Helper()
	RequireV2(t)
	name := fmt.Sprintf("/oomguard-test-%s-%d-%d", sanitize(t.Name()), os.Getpid(), time.Now().UnixNano()%1e6)
	cg := &V2Cgroup{FS: &cgroup.FS{Root: V2Root}, Rel: name}
	if err := cg.FS.Mkdir(name); err != nil {
		t.Fatalf("create test cgroup: %v", err)
	}
	t.Cleanup(func() { cg.Remove(t) })
	cg.Delegate(t, name)
	return cg
}

// Path is the absolute path of a sub-cgroup.
func (c *V2Cgroup) Path(sub string) string { return c.FS.Path(path.Join(c.Rel, sub), "") }

// Child creates a sub-cgroup with memory.max set to limit bytes (0: no
// limit) and returns its relative path.
func (c *V2Cgroup) Child(t testing.TB, sub string, limit uint64) string {
	t.Helper()
	rel := path.Join(c.Rel, sub)
	if err := c.FS.Mkdir(rel); err != nil {
		t.Fatalf("create cgroup %s: %v", rel, err)
	}
	if limit > 0 {
		c.SetLimit(t, rel, limit)
	}
	return rel
}

// Delegate enables the memory controller for rel's children: rel may then
// hold no process of its own.
func (c *V2Cgroup) Delegate(t testing.TB, rel string) {
	t.Helper()
	if err := c.FS.WriteFile(rel, "cgroup.subtree_control", "+memory"); err != nil {
		t.Fatalf("delegate memory below %s: %v", rel, err)
	}
}

// SetLimit writes memory.max.
func (c *V2Cgroup) SetLimit(t testing.TB, rel string, limit uint64) {
	t.Helper()
	if err := c.FS.WriteFile(rel, "memory.max", strconv.FormatUint(limit, 10)); err != nil {
		t.Fatalf("set limit: %v", err)
	}
}

// Write writes a cgroup file or fails the test.
func (c *V2Cgroup) Write(t testing.TB, rel, file, value string) {
	t.Helper()
	if err := c.FS.WriteFile(rel, file, value); err != nil {
		t.Fatal(err)
	}
}

// Start runs cmd in cgroup rel from its first instruction (see StartIn);
// it is killed and reaped at the end of the test if still running.
func (c *V2Cgroup) Start(t testing.TB, rel string, cmd *exec.Cmd) {
	t.Helper()
	if err := StartIn(c.FS, rel, cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
}

// Remove kills everything left in the sub-tree with cgroup.kill (only
// processes the test started can be there) and removes it, children first.
// Safe to call twice.
func (c *V2Cgroup) Remove(t testing.TB) {
	if !c.FS.Exists(c.Rel) {
		return
	}
	if err := c.FS.WriteFile(c.Rel, "cgroup.kill", "1"); err != nil && !cgroup.IsNotExist(err) {
		t.Errorf("cleanup: cgroup.kill %s: %v", c.Rel, err)
	}
	var dirs []string
	_ = c.FS.Walk(c.Rel, func(rel string) error { dirs = append(dirs, rel); return nil })
	for attempt := 0; attempt < 250; attempt++ {
		if pids, _ := c.FS.Procs(c.Rel, true); len(pids) == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		var err error
		for attempt := 0; attempt < 50; attempt++ {
			if err = c.FS.Rmdir(dirs[i]); err == nil || os.IsNotExist(err) {
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
