package guard

import (
	"time"

	"github.com/oom-guard/oom-guard/internal/cgroup"
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

// LaggingThresholds is a Notifier whose threshold notifications come up
// to ThresholdLag bytes past the threshold (v1: V1ThresholdLag). The
// guard widens its margins by as much (Config.ThresholdLag).
type LaggingThresholds interface {
	ThresholdLag() uint64
}

// SharedThresholds is a Notifier that can register several thresholds on
// one watch (v1: one eventfd): the guard then tells the crossing from the
// early threshold's by the usage it reads, and a cgroup costs one fd less.
type SharedThresholds interface {
	Thresholds(rel string, bytes ...uint64) (notify.Watch, error)
}

// Hierarchy is the memory controller the loop guards: cgroup.Memory,
// with the hot path's open files behind Files (see kernel.go).
type Hierarchy interface {
	Version() cgroup.Version
	// FS names and walks the cgroup directories.
	FS() *cgroup.FS
	Limit(rel string) (uint64, error)
	Usage(rel string) (uint64, error)
	Stat(rel string) (cgroup.Stat, error)
	OOMKills(rel string) (uint64, error)
	OOMGroup(rel string) (bool, error)
	OOMGroupKills(rel string) (uint64, error)
	Reclaim(rel string, bytes uint64, budget time.Duration) error
	SoftLimit(rel string) (uint64, error)
	SetSoftLimit(rel string, bytes uint64) error
	// OOMKillDisabled, SetOOMKillDisable and UnderOOM are v1's
	// memory.oom_control, for a hold (hold.go).
	OOMKillDisabled(rel string) (bool, error)
	SetOOMKillDisable(rel string, disable bool) error
	UnderOOM(rel string) (bool, error)
	LimitFile() string
	// Handle keeps rel's usage, limit and stat open for fast reads.
	Handle(rel string) (Files, error)
}

// Files are one cgroup's files kept open for the hot path.
type Files interface {
	Usage() (uint64, error)
	Limit() (uint64, error)
	Stat() (cgroup.Stat, error)
	Close()
}

// Poller is the loop's epoll set (notify.Poller): Add, Remove and Wait
// belong to the loop, Wake to anyone.
type Poller interface {
	Add(fd int) error
	Remove(fd int) error
	Wait(timeout time.Duration) (ready []int, woken bool, err error)
	Wake()
	Close() error
}

// DirWatcher tells of cgroup directories made and removed and of limit
// files written (notify.Inotify).
type DirWatcher interface {
	Fd() int
	Add(dir string) error
	// Watch makes a watch on dir from any goroutine (the system call
	// alone), for Adopt; its events are held until then.
	Watch(dir string) (wd int32, err error)
	// Adopt records a watch made by Watch, and returns the changes held
	// for it meanwhile.
	Adopt(dir string, wd int32) []notify.DirChange
	Remove(dir string)
	Read() (changes []notify.DirChange, overflow bool, err error)
	Close() error
}

// Clock is the loop's time.
type Clock interface{ Now() time.Time }

// Victim is a chosen process, held so that a kill reaches it and no
// other (kill.Target).
type Victim interface {
	// Inspected is the process as it was looked at.
	Inspected() kill.Candidate
	// SetCgroup records the cgroup it was found in at the kill.
	SetCgroup(rel string)
	// Recheck says where it is now, and whether it still runs: asked at
	// the moment of the kill.
	Recheck() (kill.Now, error)
	// Kill signals it once and says when.
	Kill() (time.Time, error)
	// ExitFd, after Kill, hands over an fd (a pidfd) that turns readable
	// when it has exited; an error if there is none. The caller closes it.
	ExitFd() (int, error)
	// Close gives it up unkilled.
	Close()
}

// Killer finds and kills victims.
type Killer interface {
	// Candidates lists rel's processes scored against limit.
	Candidates(rel string, limit uint64) ([]kill.Candidate, error)
	// Open holds a chosen victim (by pidfd, or before 5.3 by a /proc/PID
	// handle), ready to be killed.
	Open(c kill.Candidate) (Victim, error)
	// KillContainer kills every process of the container cgroup rel.
	KillContainer(rel string) ([]kill.Candidate, time.Time, error)
	// KillGroup kills cgroup rel the way the kernel kills a
	// memory.oom.group: every process but those exempt (oom_score_adj
	// -1000).
	KillGroup(rel string) ([]kill.Candidate, time.Time, error)
	// Alive tells whether a process seen earlier still runs.
	Alive(c kill.Candidate) bool
	// FateOf tells what became of a process seen earlier: killed by
	// SIGKILL, exited, vanished without a trace or still running.
	FateOf(c kill.Candidate) kill.Fate
	// Exited tells whether a process has exited (gone, PID reused, or a
	// zombie): its memory is freed.
	Exited(c kill.Candidate) bool
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
	// HoldWait is the kernel's OOM notification on a held cgroup: a task
	// met the limit before the guard had killed, and waits for its kill
	// (hold.go).
	HoldWait()
	// LoopBusy is one turn of the loop: from its wake-up to its next wait.
	LoopBusy(d time.Duration)
}

// NopMetrics counts nothing.
type NopMetrics struct{}

func (NopMetrics) SetGuarded(int)         {}
func (NopMetrics) SetUnguarded(int)       {}
func (NopMetrics) Fault(string)           {}
func (NopMetrics) Crossing()              {}
func (NopMetrics) StandDown(string)       {}
func (NopMetrics) HoldWait()              {}
func (NopMetrics) LoopBusy(time.Duration) {}

// The kinds of Metrics.Fault.
const (
	FaultRegistration = "registration"  // a cgroup's notifications (retryLater)
	FaultInotifyReset = "inotify-reset" // a new inotify instance (resetInotify)
	FaultHold         = "hold"          // oom_kill_disable refused (hold.go); not retried
)

// StandDownHoldReleased: a held cgroup's tasks waited at the limit and the
// guard would not kill at once; the kernel's OOM killer had it (hold.go).
const StandDownHoldReleased = "hold-released"
