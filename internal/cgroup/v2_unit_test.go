package cgroup

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// On a kernel without memory.events.local (before 5.2), a cgroup's own
// kills are its hierarchical count less its children's. The files are the
// real memory.events recorded in the VM (testdata/v2), with the counts of
// a parent whose two children were each OOM-killed in, and one of its own.
func TestOOMKillsWithoutLocalEvents(t *testing.T) {
	real, err := os.ReadFile("testdata/v2/memory.events")
	if err != nil {
		t.Fatal(err)
	}
	withKills := func(n string) string {
		return strings.Replace(string(real), "oom_kill 1\n", "oom_kill "+n+"\n", 1)
	}
	if withKills("7") == string(real) {
		t.Fatal("testdata/v2/memory.events has no \"oom_kill 1\" line")
	}
	root := t.TempDir()
	for rel, kills := range map[string]string{"/p": "4", "/p/a": "1", "/p/b": "2", "/p/b/x": "2"} {
		dir := filepath.Join(root, rel)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "memory.events"), []byte(withKills(kills)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m := &V2{fs: &FS{Root: root}}
	for rel, want := range map[string]uint64{"/p": 1, "/p/a": 1, "/p/b": 0, "/p/b/x": 2} {
		if got, err := m.OOMKills(rel); err != nil || got != want {
			t.Errorf("OOMKills(%s) = %d, %v; want %d", rel, got, err, want)
		}
	}
	if _, err := m.OOMKills("/gone"); !IsNotExist(err) {
		t.Errorf("a missing cgroup: %v", err)
	}
}
