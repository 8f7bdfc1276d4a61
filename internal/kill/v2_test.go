package kill_test

// Whole-cgroup kills on cgroup v2 against a real kernel, in the VM
// (internal/testenv/vm): TestKillV2InVM boots it and reports each TestV2*
// test as its subtest; on the host they skip.

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/kill"
	"github.com/oom-guard/oom-guard/internal/testenv"
	"github.com/oom-guard/oom-guard/internal/testenv/vm"
)

func TestKillV2InVM(t *testing.T) {
	vm.Run(t, ".", vm.Options{Run: "^TestV2"})
}

// v2Killer is a Killer over the VM's whole v2 hierarchy, with a test
// cgroup holding two sleepers in c and one in c/sub.
func v2Killer(t *testing.T) (kill.Killer, *testenv.V2Cgroup, string, []*exec.Cmd) {
	t.Helper()
	vm.GuestOnly(t)
	cg := testenv.NewV2Cgroup(t)
	rel := cg.Child(t, "c", 0)
	sub := cg.Child(t, "c/sub", 0)
	var cmds []*exec.Cmd
	for _, where := range []string{rel, rel, sub} {
		cmd := testenv.HogCommand(testenv.HogSpec{Kind: "sleep"})
		cg.Start(t, where, cmd)
		cmds = append(cmds, cmd)
	}
	return kill.Killer{Mem: cg.FS, Unified: true, Self: os.Getpid()}, cg, rel, cmds
}

// KillContainer takes every process of the sub-tree with one write to
// cgroup.kill, and no process outside it.
func TestV2KillContainerAtOnce(t *testing.T) {
	k, cg, rel, cmds := v2Killer(t)
	outsider := testenv.HogCommand(testenv.HogSpec{Kind: "sleep"})
	cg.Start(t, cg.Child(t, "other", 0), outsider)
	killed, sent, err := k.KillContainer(rel)
	if err != nil || len(killed) != 3 || sent.IsZero() {
		t.Fatalf("killed %v at %v, %v", killed, sent, err)
	}
	for _, c := range cmds {
		waitExit(t, c)
	}
	if !alive(outsider) {
		t.Fatal("a process outside the cgroup died")
	}
	if _, _, err := k.KillContainer(rel); !errors.Is(err, kill.ErrNoVictim) {
		t.Fatalf("empty cgroup: %v", err)
	}
}

// KillGroup kills as the kernel kills a memory.oom.group: an exempt
// process (oom_score_adj -1000) is spared, so the others are killed one by
// one under cgroup.freeze, and the cgroup is left thawed.
func TestV2KillGroupSparesExempt(t *testing.T) {
	k, cg, rel, cmds := v2Killer(t)
	setAdj(t, cmds[1], "-1000") // the VM's kernel allows it
	killed, _, err := k.KillGroup(rel)
	if err != nil || len(killed) != 2 {
		t.Fatalf("killed %v, %v", killed, err)
	}
	waitExit(t, cmds[0])
	waitExit(t, cmds[2])
	time.Sleep(50 * time.Millisecond)
	if !alive(cmds[1]) {
		t.Fatal("the exempt process died")
	}
	for _, c := range []string{rel, rel + "/sub"} {
		if ev, err := cg.FS.ReadFile(c, "cgroup.events"); err != nil || !strings.Contains(string(ev), "frozen 0") {
			t.Fatalf("%s left frozen: %q, %v", c, ev, err)
		}
	}
}

// The guard's own process is never killed: a cgroup holding it is killed
// one by one (cgroup.kill would take the guard with it).
func TestV2KillSparesTheGuard(t *testing.T) {
	k, _, rel, cmds := v2Killer(t)
	k.Self = cmds[0].Process.Pid // stands in for the guard
	killed, _, err := k.KillContainer(rel)
	if err != nil || len(killed) != 2 {
		t.Fatalf("killed %v, %v", killed, err)
	}
	waitExit(t, cmds[1])
	waitExit(t, cmds[2])
	if !alive(cmds[0]) {
		t.Fatal("the guard's stand-in died")
	}
}
