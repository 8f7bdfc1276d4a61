package event

import "time"

// The guard loop and the kernel log only state facts; one stage (package
// reconcile) makes every Event of them: it de-duplicates, classifies,
// names the container and pod, writes the message and counts.

// Action is what the guard did, or under the noop policy would have done.
type Action struct {
	At     time.Time
	Reason Reason // KillProcess, KillContainer or WouldKill
	Policy string // as the seed's event spells it: "Process", "Container", "Noop"
	// OOMCgroup is the guarded cgroup (absolute path), ProcCgroup the
	// victim's.
	OOMCgroup, ProcCgroup   string
	Threshold, Usage, Limit uint64
	Stats                   string // memory.stat as the seed's event carries it
	Killed                  []Process
	// Reaction is the time from the kernel's notification to the signal;
	// 0 where no notification preceded it.
	Reaction time.Duration
	// OOMGroup is the cgroup with memory.oom.group set that the kernel
	// would kill whole (absolute path): the guard killed (or would kill)
	// all of it too. Empty when none, or when it is the container itself
	// under the container policy.
	OOMGroup string
	// AfterChildOOM is the kernel's kill of a container's child that
	// this action answered (--kill-container-on-child-oom); nil for an
	// action at a threshold crossing.
	AfterChildOOM *Event
}

// CounterKill is a kernel OOM kill seen in a cgroup's kill counter
// (v1 memory.oom_control, v2 memory.events.local).
type CounterKill struct {
	At time.Time
	// OOMCgroup is the guarded cgroup whose OOM notification led to the
	// count, ProcCgroup the one whose counter moved (absolute paths).
	OOMCgroup, ProcCgroup   string
	Threshold, Usage, Limit uint64
	Stats                   string
	// Victims are the processes the guard saw in ProcCgroup before the
	// kill and found gone after: the one victim of a kill, or, for a
	// memory.oom.group kill, every process it took (the likeliest first
	// victim first); empty when it cannot tell.
	Victims []Process
	// OOMGroup is the cgroup with memory.oom.group set that the kernel
	// killed whole (absolute path): the kill is one, of the whole
	// container, however many processes and threads it counted. Empty
	// for a kill of one process.
	OOMGroup string
}
