package reconcile

import (
	"fmt"
	"strings"
	"time"

	"github.com/oom-guard/oom-guard/internal/event"
)

// describe is the one line a person reads, in the log and in the
// Kubernetes Event alike: what happened, to which process and container,
// usage against the limit, the policy, and where. a is the action the
// event reports; nil for the kernel's kills.
func describe(ev event.Event, a *event.Action) string {
	victims, in := victimText(ev), containerText(ev)
	var msg string
	switch ev.Reason {
	case event.KillProcess:
		msg = fmt.Sprintf("oom-guard killed %s%s before the kernel's OOM killer: %s, policy process%s", victims, in, usageText(ev), reactionText(ev))
	case event.KillContainer:
		if a != nil && a.AfterChildOOM != nil {
			msg = fmt.Sprintf("oom-guard killed the container%s (%s) after the kernel OOM-killed its child %s, so that it is restarted rather than left running without it (--kill-container-on-child-oom)",
				in, victims, victimText(*a.AfterChildOOM))
			break
		}
		// Under the process policy too, where memory.oom.group made it
		// kill the whole container, as the kernel would (oomGroupText).
		msg = fmt.Sprintf("oom-guard killed the container%s (%s) before the kernel's OOM killer: %s, policy %s%s", in, victims, usageText(ev), policyText(ev), reactionText(ev))
	case event.WouldKill:
		msg = fmt.Sprintf("oom-guard would have killed %s%s: %s, policy noop (nothing killed)", victims, in, usageText(ev))
	case event.ChildOOM:
		msg = fmt.Sprintf("the kernel OOM-killed %s, a child process%s; the container keeps running, so its runtime and Kubernetes report nothing: %s", victims, in, limitText(ev))
	case event.CgroupOOM:
		msg = fmt.Sprintf("the kernel OOM-killed %s%s: %s", victims, in, limitText(ev))
	case event.SystemOOM:
		msg = fmt.Sprintf("system OOM: the kernel killed %s%s", victims, in)
	default:
		msg = fmt.Sprintf("%s: %s%s", ev.Reason, victims, in)
	}
	return msg + oomGroupText(ev) + whereText(ev)
}

// victimText names the processes killed: "dd (pid 1234)", with the memory
// the kernel saw at death when it said.
func victimText(ev event.Event) string {
	switch len(ev.Processes) {
	case 0:
		return "a process"
	case 1:
		p := ev.Processes[0]
		s := fmt.Sprintf("%s (pid %d", p.Comm, p.Pid)
		if p.AnonRSSKB > 0 {
			s += fmt.Sprintf(", anon-rss %d MiB", p.AnonRSSKB>>10)
		}
		return s + ")"
	}
	const shown = 5
	var names []string
	for i, p := range ev.Processes {
		if i == shown {
			names = append(names, fmt.Sprintf("and %d more", len(ev.Processes)-shown))
			break
		}
		names = append(names, fmt.Sprintf("%s (pid %d)", p.Comm, p.Pid))
	}
	return fmt.Sprintf("%d processes: %s", len(ev.Processes), strings.Join(names, ", "))
}

func containerText(ev event.Event) string {
	switch {
	case ev.ContainerName != "":
		return " in container " + ev.ContainerName
	case ev.ContainerID != "":
		return " in container " + shortID(ev.ContainerID)
	}
	return ""
}

func usageText(ev event.Event) string {
	s := fmt.Sprintf("usage %s over threshold %s", mib(ev.Usage), mib(ev.Threshold))
	if ev.Limit > 0 {
		s += " of limit " + mib(ev.Limit)
	}
	return s
}

// policyText is the policy as --policy spells it.
func policyText(ev event.Event) string {
	if ev.Policy == "" {
		return "container"
	}
	return strings.ToLower(ev.Policy)
}

func reactionText(ev event.Event) string {
	if ev.Reaction <= 0 {
		return ""
	}
	return fmt.Sprintf(", %v after the kernel's notification", ev.Reaction.Round(time.Microsecond))
}

func limitText(ev event.Event) string {
	s := "memory limit hit"
	if ev.Limit > 0 {
		s = "memory limit " + mib(ev.Limit) + " hit"
	}
	if ev.OOMCgroup != "" && ev.OOMCgroup != ev.ProcCgroup {
		s += " in " + ev.OOMCgroup
	}
	return s
}

// oomGroupText says why more than one process died: the kernel would have
// killed the whole memory.oom.group, so the guard did (or would).
func oomGroupText(ev event.Event) string {
	if ev.OOMGroup == "" {
		return ""
	}
	switch ev.Reason {
	case event.CgroupOOM:
		return "; memory.oom.group is set on " + ev.OOMGroup + ": the kernel killed all of it"
	case event.WouldKill:
		return "; memory.oom.group is set on " + ev.OOMGroup + ": the kernel will kill all of it"
	case event.KillContainer:
		if ev.Policy == "Container" {
			return "; memory.oom.group is set on " + ev.OOMGroup + ", above the container: all of it killed, as the kernel would"
		}
		return "; memory.oom.group is set on " + ev.OOMGroup + ": the kernel would kill all of it, not one process, so the process policy did too"
	}
	return ""
}

// whereText says where: the pod (by UID when only the path named it) and
// the cgroup.
func whereText(ev event.Event) string {
	var where []string
	switch {
	case ev.PodName != "":
		where = append(where, "pod "+ev.PodNamespace+"/"+ev.PodName)
	case ev.PodUID != "":
		where = append(where, "pod UID "+ev.PodUID)
	}
	if ev.ProcCgroup != "" {
		where = append(where, "cgroup "+ev.ProcCgroup)
	}
	if len(where) == 0 {
		return ""
	}
	return " [" + strings.Join(where, ", ") + "]"
}

func mib(b uint64) string { return fmt.Sprintf("%.1fMiB", float64(b)/(1<<20)) }

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
