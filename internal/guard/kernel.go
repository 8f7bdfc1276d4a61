package guard

import (
	"os"
	"time"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/kernel"
	"github.com/oom-guard/oom-guard/internal/kill"
	"github.com/oom-guard/oom-guard/internal/notify"
)

// Kernel is everything the loop asks of the kernel, each behind a port
// of ports.go: New fills it with the real parts, and a unit test with a
// fake kernel.
type Kernel struct {
	Mem        Hierarchy
	Notifier   Notifier
	Killer     Killer
	NewPoller  func() (Poller, error)
	NewWatcher func() (DirWatcher, error)
	Clock      Clock
	Placer     LoopPlacer // nil: the loop sleeps wherever the scheduler puts it
	// OOMWait: a v1 task at its limit with oom_kill_disable waits outside
	// its locks (kernel.HasOOMWait, 3.12); without it nothing is held.
	OOMWait bool
	// SelfCgroup is the guard's own memory cgroup relative to the root
	// ("" outside it); nil or an error: unknown, and nothing is held.
	SelfCgroup func() (string, error)
}

// ProcessKiller is what kill.Killer and kill.ViaRuntime offer; its Open
// holds a victim as a *kill.Target.
type ProcessKiller interface {
	Candidates(rel string, limit uint64) ([]kill.Candidate, error)
	Open(c kill.Candidate) (*kill.Target, error)
	KillContainer(rel string) ([]kill.Candidate, time.Time, error)
	KillGroup(rel string) ([]kill.Candidate, time.Time, error)
	Alive(c kill.Candidate) bool
	FateOf(c kill.Candidate) kill.Fate
	Exited(c kill.Candidate) bool
}

// RealKernel is the running kernel: mem's hierarchy, epoll, inotify, the
// wall clock.
func RealKernel(mem cgroup.Memory, n Notifier, k ProcessKiller) Kernel {
	return Kernel{
		Mem: memory{mem}, Notifier: n, Killer: killer{k},
		NewPoller: func() (Poller, error) {
			p, err := notify.NewPoller()
			if err != nil {
				return nil, err
			}
			return p, nil
		},
		NewWatcher: func() (DirWatcher, error) {
			in, err := notify.NewInotify()
			if err != nil {
				return nil, err
			}
			return in, nil
		},
		Clock:   wallClock{},
		Placer:  &threadPlacer{},
		OOMWait: kernel.HasOOMWait(),
		SelfCgroup: func() (string, error) {
			inside, rel, err := kill.CgroupOf(os.Getpid(), mem.FS().Root, mem.Version() == cgroup.VersionV2)
			if err != nil || !inside {
				return "", err
			}
			return rel, nil
		},
	}
}

// memory is cgroup.Memory with its Handle as Files.
type memory struct{ cgroup.Memory }

func (m memory) Handle(rel string) (Files, error) {
	h, err := m.Memory.Handle(rel)
	if err != nil {
		return nil, err // not a nil *Handle inside the interface
	}
	return h, nil
}

// killer is a ProcessKiller whose victims are Victims.
type killer struct{ ProcessKiller }

func (k killer) Open(c kill.Candidate) (Victim, error) {
	t, err := k.ProcessKiller.Open(c)
	if err != nil {
		return nil, err
	}
	return t, nil
}

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }
