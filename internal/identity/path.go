// Package identity tells which container and pod a memory cgroup belongs to:
// first from the cgroup path alone (FromPath: pure, never blocks, works with
// no runtime reachable), then optionally with names from the container
// runtime (Docker Engine API, CRI), cached so the kill path never waits long.
package identity

import "strings"

// Runtimes as they appear in ID.Runtime and event.Identity.Runtime.
const (
	RuntimeDocker     = "docker"
	RuntimeContainerd = "containerd"
	RuntimeCRIO       = "crio"
)

// QoS classes as they appear in ID.QoS.
const (
	QoSGuaranteed = "guaranteed"
	QoSBurstable  = "burstable"
	QoSBestEffort = "besteffort"
)

// ID is what a cgroup path alone tells. A pod-level cgroup has PodUID and
// QoS set and ContainerID empty.
type ID struct {
	// Runtime is "docker", "containerd", "crio", or "" when the layout does
	// not say (cgroupfs names a container's cgroup by its bare ID whether
	// docker or containerd made it).
	Runtime string
	// ContainerID is 64 lowercase hex digits. For a Conmon cgroup it is the
	// container that conmon monitors, not a container itself.
	ContainerID string
	// PodUID is the pod UID with dashes (3d6329e5-455f-11e9-a7e5-06925242d7ea);
	// for a static pod, the kubelet's 32-hex config hash, which is what the
	// runtime's io.kubernetes.pod.uid label carries too.
	PodUID string
	// QoS is "guaranteed", "burstable", "besteffort", or "" outside Kubernetes.
	QoS string
	// Sandbox is true only when the path proves the cgroup is a pod sandbox
	// (pause) container. No layout known today does (containerd, CRI-O and
	// dockershim name the sandbox's cgroup like any container's), so FromPath
	// leaves it false and Info.Sandbox from a runtime is what callers check.
	Sandbox bool
	// Conmon marks CRI-O's crio-conmon-<id> cgroup: the runtime's monitor
	// process, never a victim.
	Conmon bool
}

// maxPathLen bounds the work done on a path from an untrusted source (the
// kernel log); real cgroup paths are far shorter.
const maxPathLen = 4096

// FromPath parses a memory cgroup path: relative to the hierarchy root
// ("/kubepods/burstable/pod<uid>/<id>") or absolute under a mount point
// ("/sys/fs/cgroup/memory/docker/<id>"), with any prefix above the kubelet's
// cgroups (a custom cgroup root, kind's /kubelet.slice, a nested
// /lxc.payload.NAME or /docker/<node id>). Layouts:
//
//	cgroupfs   /kubepods[/burstable|/besteffort]/pod<uid>/<id>|crio-<id>|crio-conmon-<id>
//	systemd    /kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid_>.slice/<scope>
//	scopes     cri-containerd-<id>.scope, crio-<id>.scope[/container], crio-conmon-<id>.scope, docker-<id>.scope
//	Docker     /docker/<id>, /system.slice/docker-<id>.scope
//
// Cgroups below a container's (crio's /container child, a sub-cgroup a
// process inside made) belong to that container. A path it does not
// recognise, including QoS-level and node-level cgroups and an unknown child
// of a pod, gives ok=false.
func FromPath(cgroupPath string) (id ID, ok bool) {
	if len(cgroupPath) == 0 || len(cgroupPath) > maxPathLen {
		return ID{}, false
	}
	segs := splitPath(cgroupPath)
	if segs == nil {
		return ID{}, false
	}
	// The deepest pod wins: a node nested in a pod (kind in Kubernetes)
	// names its own pods below the outer one.
	for i := len(segs) - 1; i >= 0; i-- {
		var parent string
		if i > 0 {
			parent = segs[i-1]
		}
		var grand string
		if i > 1 {
			grand = segs[i-2]
		}
		uid, qos, isPod := podSegment(segs[i], parent, grand)
		if !isPod {
			continue
		}
		id = ID{PodUID: uid, QoS: qos}
		if i == len(segs)-1 {
			return id, true
		}
		c, isCtr := containerSegment(segs[i+1])
		if !isCtr {
			return ID{}, false
		}
		id.Runtime, id.ContainerID, id.Conmon = c.runtime, c.id, c.conmon
		return id, true
	}
	for _, s := range segs {
		// Below the kubelet's root every container is in a pod: a container
		// name there without a pod we recognise is a layout we do not know,
		// and guessing would attribute it wrongly.
		if s == "kubepods" || s == "kubepods.slice" || strings.HasSuffix(s, "-kubepods.slice") {
			return ID{}, false
		}
	}
	// Outside Kubernetes the deepest container wins for the same reason:
	// /docker/<node>/docker/<id> is a container in a nested dockerd.
	for i := len(segs) - 1; i >= 0; i-- {
		if i > 0 && segs[i-1] == "docker" && isHex(segs[i], 64) {
			return ID{Runtime: RuntimeDocker, ContainerID: segs[i]}, true
		}
		if c, isCtr := containerSegment(segs[i]); isCtr && c.runtime != "" {
			return ID{Runtime: c.runtime, ContainerID: c.id, Conmon: c.conmon}, true
		}
	}
	return ID{}, false
}

// splitPath returns the non-empty segments, or nil for a path that cannot
// be a cgroup (".." would let a reported path escape the hierarchy).
func splitPath(p string) []string {
	raw := strings.Split(p, "/")
	segs := make([]string, 0, len(raw))
	for _, s := range raw {
		switch s {
		case "", ".":
			continue
		case "..":
			return nil
		}
		segs = append(segs, s)
	}
	if len(segs) == 0 {
		return nil
	}
	return segs
}

// podSegment recognises a pod cgroup from its own name and its parents'.
// The parents are checked so that a directory that merely starts with "pod"
// somewhere else is not taken for a pod.
func podSegment(seg, parent, grand string) (uid, qos string, ok bool) {
	if rest, found := strings.CutPrefix(seg, "pod"); found {
		// cgroupfs: /kubepods/pod<uid>, /kubepods/<qos>/pod<uid>
		uid, ok = podUID(rest, '-')
		if !ok {
			return "", "", false
		}
		switch {
		case parent == "kubepods":
			return uid, QoSGuaranteed, true
		case (parent == QoSBurstable || parent == QoSBestEffort) && grand == "kubepods":
			return uid, parent, true
		}
		return "", "", false
	}
	// systemd: the slice's name carries its ancestry, dash-separated:
	// [prefix-]kubepods[-qos]-pod<uid_>.slice, and its parent is that
	// name less the last component (systemd's own naming rule), which also
	// holds for a custom root such as kind's kubelet-kubepods.slice.
	name, found := strings.CutSuffix(seg, ".slice")
	if !found {
		return "", "", false
	}
	cut := strings.LastIndexByte(name, '-')
	if cut < 0 {
		return "", "", false
	}
	ancestry, last := name[:cut], name[cut+1:]
	rest, found := strings.CutPrefix(last, "pod")
	if !found {
		return "", "", false
	}
	uid, ok = podUID(rest, '_')
	if !ok || parent != ancestry+".slice" {
		return "", "", false
	}
	switch {
	case lastComponents(ancestry, "kubepods"):
		return uid, QoSGuaranteed, true
	case lastComponents(ancestry, "kubepods-"+QoSBurstable):
		return uid, QoSBurstable, true
	case lastComponents(ancestry, "kubepods-"+QoSBestEffort):
		return uid, QoSBestEffort, true
	}
	return "", "", false
}

// lastComponents reports whether the dash-separated name ends with the
// whole components in tail ("kubelet-kubepods" ends with "kubepods",
// "xkubepods" does not).
func lastComponents(name, tail string) bool {
	return name == tail || strings.HasSuffix(name, "-"+tail)
}

// podUID accepts a UUID whose groups are joined by sep (the systemd driver
// writes '_' because '-' separates slice levels) and returns it with dashes;
// or a static pod's 32-hex config hash as is.
func podUID(s string, sep byte) (string, bool) {
	if isHex(s, 32) {
		return s, true
	}
	if len(s) != 36 {
		return "", false
	}
	b := []byte(s)
	for i, c := range b {
		switch i {
		case 8, 13, 18, 23:
			if c != sep {
				return "", false
			}
			b[i] = '-'
		default:
			if !isHexDigit(c) {
				return "", false
			}
		}
	}
	return string(b), true
}

type ctrSeg struct {
	runtime string
	id      string
	conmon  bool
}

// containerSegment recognises the cgroup a runtime makes for one container.
func containerSegment(seg string) (ctrSeg, bool) {
	if isHex(seg, 64) {
		return ctrSeg{id: seg}, true
	}
	name, scope := strings.CutSuffix(seg, ".scope")
	for _, p := range []struct {
		prefix, runtime string
		conmon          bool
		bare            bool // also valid without .scope (the cgroupfs driver)
	}{
		{"cri-containerd-", RuntimeContainerd, false, false},
		{"crio-conmon-", RuntimeCRIO, true, true},
		{"crio-", RuntimeCRIO, false, true},
		{"docker-", RuntimeDocker, false, false},
	} {
		rest, found := strings.CutPrefix(name, p.prefix)
		if !found {
			continue
		}
		if !isHex(rest, 64) || (!scope && !p.bare) {
			return ctrSeg{}, false
		}
		return ctrSeg{runtime: p.runtime, id: rest, conmon: p.conmon}, true
	}
	return ctrSeg{}, false
}

// isHex reports whether s is n lowercase hex digits: runtimes write IDs in
// lowercase, so anything else is not one of theirs.
func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isHexDigit(s[i]) {
			return false
		}
	}
	return true
}

func isHexDigit(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' }
