package guard

import (
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/kill"
)

type stepClock struct{ t time.Time }

func (c *stepClock) Now() time.Time { return c.t }

// A process dying of SIGKILL holds the guard back (its memory is coming
// back), for at most dyingWait: a victim stuck dying must not keep its
// cgroup waiting, as the kernel's OOM killer would.
func TestAwaitDying(t *testing.T) {
	clock := &stepClock{time.Unix(1000, 0)}
	g := &Guard{clock: clock, self: 1}
	c := &cg{rel: "/c"}
	dying := kill.Candidate{Pid: 10, Dying: true}
	other := kill.Candidate{Pid: 11}
	if _, wait := g.awaitDying(c, []kill.Candidate{dying, other}); !wait {
		t.Fatal("a dying victim: want to wait")
	}
	clock.t = clock.t.Add(dyingWait / 2)
	if _, wait := g.awaitDying(c, []kill.Candidate{dying, other}); !wait {
		t.Fatal("still within dyingWait: want to wait")
	}
	clock.t = clock.t.Add(dyingWait)
	cands, wait := g.awaitDying(c, []kill.Candidate{dying, other})
	if wait || len(cands) != 1 || cands[0].Pid != 11 {
		t.Fatalf("past dyingWait: %v, %v; want the others without the dying one", cands, wait)
	}
	if _, wait := g.awaitDying(c, []kill.Candidate{other}); wait || !c.dyingSince.IsZero() {
		t.Fatal("nobody dying: no wait, and the clock reset")
	}
	// The guard itself dying is not a victim to wait for.
	if _, wait := g.awaitDying(c, []kill.Candidate{{Pid: 1, Dying: true}, other}); wait {
		t.Fatal("the guard's own pid is no victim")
	}
}
