// Package event is the one record every part of oom-guard produces and every
// sink consumes: the seed's JSON (field names exactly as in the original
// product, seed 000), plus the reason and the identity a Kubernetes operator
// needs.
package event

import (
	"fmt"
	"strings"
	"time"
)

// Reason says what happened. The first four are the seed's Kubernetes Event reasons.
type Reason string

const (
	// The guard killed a whole container before the kernel could.
	KillContainer Reason = "OomGuardKillContainer"
	// The guard killed one process before the kernel could.
	KillProcess Reason = "OomGuardKillProcess"
	// The noop policy: the guard would have killed, and only logged it.
	WouldKill Reason = "OomGuardWouldKill"
	// The kernel OOM-killed a process inside a memory cgroup.
	CgroupOOM Reason = "CgroupOOM"
	// The kernel's global (system-wide) OOM killer killed a process.
	SystemOOM Reason = "SystemOOM"
	// The kernel OOM-killed a process that was not the container's init,
	// and the container goes on running: the case Kubernetes never reports.
	ChildOOM Reason = "ContainerChildOOMKilled"
)

// Process is one process killed (by the guard or the kernel).
type Process struct {
	Pid  int    `json:"pid"`
	Comm string `json:"comm"`
	// Memory at death, where known (kernel log, or /proc before the kill).
	AnonRSSKB  uint64 `json:"anonRssKB,omitempty"`
	FileRSSKB  uint64 `json:"fileRssKB,omitempty"`
	ShmemRSSKB uint64 `json:"shmemRssKB,omitempty"`
	TotalVMKB  uint64 `json:"totalVmKB,omitempty"`
	OOMScore   int    `json:"oomScore,omitempty"`
	Cgroup     string `json:"cgroup,omitempty"`
	// PidInNS is the pid inside the process's own pid namespace (1: a
	// container's init), 0 when unknown.
	PidInNS int `json:"pidInNS,omitempty"`
}

// Identity is what the cgroup path and the container runtime tell about
// where the kill happened. Any field may be empty.
type Identity struct {
	Runtime       string `json:"runtime,omitempty"` // docker, containerd, crio
	ContainerID   string `json:"containerID,omitempty"`
	ContainerName string `json:"containerName,omitempty"`
	PodUID        string `json:"podUID,omitempty"`
	PodName       string `json:"podName,omitempty"`
	PodNamespace  string `json:"podNamespace,omitempty"`
}

// Or is id with what it lacks taken from other.
func (id Identity) Or(other Identity) Identity {
	for _, f := range []struct {
		dst *string
		src string
	}{
		{&id.Runtime, other.Runtime}, {&id.ContainerID, other.ContainerID}, {&id.ContainerName, other.ContainerName},
		{&id.PodUID, other.PodUID}, {&id.PodName, other.PodName}, {&id.PodNamespace, other.PodNamespace},
	} {
		if *f.dst == "" {
			*f.dst = f.src
		}
	}
	return id
}

// Event is one thing the guard reports. The first nine fields are the seed's
// webhook JSON, verbatim; the rest are additions a consumer of the seed's
// format can ignore.
type Event struct {
	Hostname   string    `json:"hostname"`
	Timestamp  time.Time `json:"timestamp"`
	OOMCgroup  string    `json:"oomcgroup"`  // the cgroup whose limit was (nearly) hit, absolute path
	ProcCgroup string    `json:"proccgroup"` // the killed process's cgroup, absolute path
	Threshold  uint64    `json:"threshold"`
	Usage      uint64    `json:"usage"`
	Killed     string    `json:"killed"` // "PID(COMM) " per process, as the seed writes it
	Stats      string    `json:"stats"`  // memory.stat as "key value|key value|"
	Policy     string    `json:"policy"` // "Container", "Process", "Noop"; "Kernel" for the kernel's kills

	Reason    Reason    `json:"reason"`
	Limit     uint64    `json:"limit,omitempty"`
	Processes []Process `json:"processes,omitempty"`
	// Reaction is the guard's time from the kernel's notification to the
	// kill signal (nanoseconds in JSON); 0 when not measured.
	Reaction time.Duration `json:"reactionNanos,omitempty"`
	// OOMGroup is the memory.oom.group cgroup killed whole: by the
	// kernel (a CgroupOOM of all its processes, one event per container)
	// or by the guard, as the kernel would have.
	OOMGroup string `json:"oomGroup,omitempty"`
	Identity
	// Message is one line a person can read; sinks may use it as is.
	Message string `json:"message,omitempty"`
}

// KilledField renders processes as the seed's "killed" field.
func KilledField(ps []Process) string {
	var b strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&b, "%d(%s) ", p.Pid, p.Comm)
	}
	return b.String()
}
