package reconcile

import (
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/event"
)

// childStopper kills the containers that lost a child to the kernel's OOM
// killer (--kill-container-on-child-oom), one at a time on a goroutine of
// its own: a runtime's stop can take up to its timeout, and reporting
// must not wait for it. Each stop done is an action, handed back to the
// stage as the guard's are. A nil childStopper does nothing.
type childStopper struct {
	kill    ContainerKiller
	scoped  func(cgroup string) bool
	dropped *atomic.Uint64
	queue   chan event.Event
	done    chan event.Action
}

// childStopQueue bounds the stops waiting: more are dropped and counted.
const childStopQueue = 64

func newChildStopper(kill ContainerKiller, scoped func(string) bool, dropped *atomic.Uint64) *childStopper {
	s := &childStopper{kill: kill, scoped: scoped, dropped: dropped,
		queue: make(chan event.Event, childStopQueue), done: make(chan event.Action, childStopQueue)}
	go s.run()
	return s
}

// ask has the container of a ChildOOM event killed. It never blocks.
func (s *childStopper) ask(ev event.Event) {
	if s == nil || !s.scoped(ev.ProcCgroup) {
		return
	}
	select {
	case s.queue <- ev:
	default:
		s.dropped.Add(1)
		klog.Errorf("container %s: not killed after its child's OOM: %d container kills already waiting", ev.ContainerID, childStopQueue)
	}
}

// results is where the stops done come out.
func (s *childStopper) results() <-chan event.Action {
	if s == nil {
		return nil
	}
	return s.done
}

// finish takes no more asks and returns the channel of the stops still to
// come, closed after the last.
func (s *childStopper) finish() <-chan event.Action {
	if s == nil {
		c := make(chan event.Action)
		close(c)
		return c
	}
	close(s.queue)
	return s.done
}

func (s *childStopper) run() {
	defer close(s.done)
	for ev := range s.queue {
		killed, err := s.kill(ev.ProcCgroup)
		if err != nil {
			klog.Errorf("container %s (%s): kill after the kernel OOM-killed its child: %v", ev.ContainerID, ev.ProcCgroup, err)
			continue
		}
		cause := ev
		s.done <- event.Action{
			At: time.Now(), Reason: event.KillContainer, Policy: "Container",
			OOMCgroup: ev.OOMCgroup, ProcCgroup: ev.ProcCgroup, Limit: ev.Limit, Stats: ev.Stats,
			Killed: killed, AfterChildOOM: &cause,
		}
	}
}
