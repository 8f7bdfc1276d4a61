package guard

import (
	"time"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/kill"
	"github.com/oom-guard/oom-guard/internal/notify"
)

// Notifier registers the kernel notifications for one cgroup (v1: memcg
// eventfds; v2: eventfds its sampler writes). Watches are closed by the
// guard loop, the only one waiting on them. A call that fails returns a
// nil Watch.
type Notifier interface {
	// Threshold fires when the cgroup's usage crosses bytes, either way.
	Threshold(rel string, bytes uint64) (notify.Watch, error)
	// OOM fires when the kernel finds the cgroup out of memory.
	OOM(rel string) (notify.Watch, error)
	// Sampler is work the loop must do for the notifier (v2 samples
	// usage: it has no usage thresholds); nil when the kernel does it all.
	Sampler() notify.Sampler
}

// Killer finds and kills victims.
type Killer interface {
	// Candidates lists rel's processes scored against limit.
	Candidates(rel string, limit uint64) ([]kill.Candidate, error)
	// Open holds a chosen victim by pidfd, ready to be killed.
	Open(c kill.Candidate) (*kill.Target, error)
	// KillContainer kills every process of the container cgroup rel.
	KillContainer(rel string) ([]kill.Candidate, time.Time, error)
	// KillGroup kills cgroup rel the way the kernel kills a
	// memory.oom.group: every process but those exempt (oom_score_adj
	// -1000).
	KillGroup(rel string) ([]kill.Candidate, time.Time, error)
	// Alive tells whether a process seen earlier still runs.
	Alive(c kill.Candidate) bool
	// Exited tells whether a process has exited (gone, PID reused, or a
	// zombie): its memory is freed.
	Exited(c kill.Candidate) bool
	// ExitFd opens an fd (a pidfd) that turns readable when c exits;
	// kill.ErrGone if it has. The caller closes it.
	ExitFd(c kill.Candidate) (int, error)
	// Recheck says where a chosen victim is now, and whether it still
	// runs: asked at the moment of the kill.
	Recheck(c kill.Candidate) (kill.Now, error)
}

// Reporter takes the loop's facts, of which one stage (package reconcile)
// makes the events and counts; it must not block.
type Reporter interface {
	// Acted: the guard killed (or under noop would have).
	Acted(event.Action)
	// Counted: a cgroup's counter says the kernel OOM-killed a process.
	Counted(event.CounterKill)
}

// Metrics is what the loop counts of its own work; the kills are counted
// where their events are made.
type Metrics interface {
	SetGuarded(n int)
	// SetUnguarded is how many limited cgroups wait for a registration
	// retry.
	SetUnguarded(n int)
	// Fault counts an operation that failed and will be retried
	// (FaultRegistration, FaultInotifyReset).
	Fault(kind string)
	Crossing()
	StandDown(reason string)
}

// NopMetrics counts nothing.
type NopMetrics struct{}

func (NopMetrics) SetGuarded(int)   {}
func (NopMetrics) SetUnguarded(int) {}
func (NopMetrics) Fault(string)     {}
func (NopMetrics) Crossing()        {}
func (NopMetrics) StandDown(string) {}

// The kinds of Metrics.Fault.
const (
	FaultRegistration = "registration"  // a cgroup's notifications (retryLater)
	FaultInotifyReset = "inotify-reset" // a new inotify instance (resetInotify)
)
