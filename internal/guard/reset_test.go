package guard_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/testenv"
)

// Inotify resets over thousands of cgroups happen off the loop, and lose
// nothing: a cgroup made, a limit lifted, a cgroup removed while a reset
// is under way are seen; once the new instance is in place, a cgroup made
// after is found by it (the walk is an hour away) and guarded, and its hog
// killed by the guard. The loop's longest turn meanwhile is printed:
// bench/preempt -reset-stall measures it.
func TestResetsOverManyCgroupsLoseNothing(t *testing.T) {
	cg := testenv.NewCgroup(t)
	const unlimited, limited = 2000, 100
	for i := 0; i < unlimited; i++ {
		if err := cg.Mem.Mkdir(fmt.Sprintf("%s/u%04d", cg.Rel, i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < limited; i++ {
		cg.Child(t, fmt.Sprintf("l%03d", i), 256<<20)
	}
	cfg := policyConfig()
	cfg.WalkInterval, cfg.InotifyReset = time.Hour, time.Hour
	g, sink := startGuardHandle(t, cg, cfg)
	sink.waitGuardedN(t, limited)
	g.TakeLoopBusyMax()
	guarded := limited
	for i := 0; i < 3; i++ {
		g.ResetInotifyNow()
		time.Sleep(time.Duration(i) * 10 * time.Millisecond) // early and later in the reset's survey
		cg.Child(t, fmt.Sprint("during-", i), 64<<20)
		guarded++
		sink.waitGuardedN(t, guarded)
	}
	g.ResetInotifyNow()
	cg.SetLimit(t, cg.Rel+"/during-0", 1<<62) // lifted: unlimited
	guarded--
	sink.waitGuardedN(t, guarded)
	g.ResetInotifyNow()
	if err := cg.Mem.Rmdir(cg.Rel + "/l000"); err != nil {
		t.Fatal(err)
	}
	guarded--
	sink.waitGuardedN(t, guarded)
	time.Sleep(time.Second) // the last reset's survey is over
	rel := cg.Child(t, "after", 64<<20)
	guarded++
	sink.waitGuardedN(t, guarded)
	t.Logf("the loop's longest turn over %d known cgroups and 5 resets: %v", unlimited+limited, g.TakeLoopBusyMax())
	hog := testenv.HogCommand(testenv.HogSpec{MiB: 0})
	cg.Start(t, rel, hog)
	ev := sink.wait(t, event.KillProcess, 10*time.Second)
	testenv.WaitExit(t, hog, 5*time.Second)
	if ev.OOMCgroup != cg.Path("after") {
		t.Fatalf("event %+v", ev)
	}
}
