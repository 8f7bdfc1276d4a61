package kill

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/kernel"
)

// A process that cannot be read for another reason than having exited
// (EACCES under hidepid; here a stat that reads as a directory, which root
// cannot be kept from reading otherwise) is not taken for exited: the list
// says it is incomplete, and a cgroup.kill that would spare an exempt
// process is not used on a cgroup whose processes nobody could all see.
func TestUnreadableProcessIsNotExited(t *testing.T) {
	if !kernel.HasOpenat2() {
		// The old-kernel re-run: its open(2) fallback refuses tmpfs, on
		// which this recorded tree lives. The normal run has openat2.
		t.Skip("the recorded tree is on tmpfs, which the open(2) fallback refuses")
	}
	root := t.TempDir()
	cg, proc := filepath.Join(root, "cgroup"), filepath.Join(root, "proc")
	for _, d := range []string{cg, filepath.Join(proc, "4242", "stat")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// 4243 exited after cgroup.procs was read: no /proc entry at all.
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte("4242\n4243\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fs := &cgroup.FS{Root: cg}
	cands, err := Candidates(fs, Proc{Root: proc}, "/", cgroup.Unlimited)
	if len(cands) != 0 || err == nil || !strings.Contains(err.Error(), "pid 4242") || strings.Contains(err.Error(), "4243") {
		t.Fatalf("candidates %v, err %v: want none, and an error naming pid 4242 only", cands, err)
	}
	k := Killer{Mem: fs, Proc: Proc{Root: proc}, Unified: true, Self: os.Getpid()}
	if !k.anyToSpare("/", nil) {
		t.Fatal("an incomplete list was taken as nobody to spare")
	}
}
