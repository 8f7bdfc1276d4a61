package guard_test

import (
	"syscall"
	"testing"

	"github.com/oom-guard/oom-guard/internal/cgroup"
)

// Restart on v2 (issue 12, case 4): --openSoftLimit takes memory.high, the
// guard is SIGKILLed, and the next one restores the operator's values from
// the record: 96 MiB, which the rule without one (memory.high at the
// threshold is a dead guard's, so "max") would lose, and "max".
func TestV2RestartRestoresOperatorsMemoryHigh(t *testing.T) {
	cg := newV2Cgroup(t)
	set := cg.Child(t, "set", 128<<20)
	unset := cg.Child(t, "unset", 128<<20)
	cg.Write(t, set, "memory.high", "100663296")
	mem := v2RootMemory(t)
	high := func(rel string) uint64 {
		v, err := mem.SoftLimit(rel)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	want := map[string]uint64{set: 96 << 20, unset: cgroup.Unlimited}
	for rel, w := range want {
		if got := high(rel); got != w {
			t.Fatalf("%s: memory.high %d before, want %d", rel, got, w)
		}
	}
	state := t.TempDir() + "/state"
	child := startChildGuard(t, cg.FS.Path(cg.Rel, ""), state)
	cfg := testConfig()
	cfg.OpenSoftLimit = true
	for rel := range want {
		if got := high(rel); got != pageFloor(cfg.Threshold(128<<20)) {
			t.Fatalf("%s: memory.high %d under the first guard, want its threshold", rel, got)
		}
	}
	_ = child.Process.Signal(syscall.SIGKILL)
	_ = child.Wait()

	cfg.StateFile = state
	g := startV2Guard(t, cg, cfg, nil)
	g.stop()
	for rel, w := range want {
		if got := high(rel); got != w {
			t.Errorf("%s: memory.high %d after the second guard stopped, want the operator's %d", rel, got, w)
		}
	}
}
