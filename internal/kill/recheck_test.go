package kill_test

import (
	"os"
	"testing"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/kill"
	"github.com/oom-guard/oom-guard/internal/testenv"
)

// A victim held by Killer.Open tells at the kill where it is now, through
// the /proc files it keeps open: inside the killer's hierarchy root, moved
// out of it, and, once reaped, gone (the kept descriptors name the reaped
// process, whoever has its number since).
func TestRecheckTellsWhereTheVictimIs(t *testing.T) {
	cg := testenv.NewCgroup(t)
	in := cg.Child(t, "in", 0)
	out := cg.Child(t, "out", 0)
	cmd := testenv.HogCommand(testenv.HogSpec{Kind: "sleep"})
	cg.Start(t, in, cmd)
	k := kill.Killer{Mem: &cgroup.FS{Root: cg.Mem.Path(in, "")}, Self: os.Getpid()}
	cands, err := k.Candidates("/", cgroup.Unlimited)
	if err != nil || len(cands) != 1 || cands[0].Pid != cmd.Process.Pid {
		t.Fatalf("candidates %+v, %v; want pid %d alone", cands, err, cmd.Process.Pid)
	}
	victim, err := k.Open(cands[0])
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close()
	held, err := k.Open(cands[0]) // to ask once the victim is reaped
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	if now, err := victim.Recheck(); err != nil || now.Gone || now.Dying || !now.Inside || now.Cgroup != "/" {
		t.Fatalf("inside: %+v, %v; want inside, at /", now, err)
	}
	if err := cg.Mem.AddProc(out, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if now, err := victim.Recheck(); err != nil || now.Gone || now.Inside {
		t.Fatalf("moved out of the root: %+v, %v; want not inside", now, err)
	}
	if err := cg.Mem.AddProc(in, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if _, err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	waitExit(t, cmd)
	if now, err := held.Recheck(); err != nil || !now.Gone {
		t.Fatalf("reaped: %+v, %v; want gone", now, err)
	}
}
