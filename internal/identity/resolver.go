package identity

import (
	"context"
	"errors"

	"github.com/oom-guard/oom-guard/internal/event"
)

// Labels every CRI runtime (and dockershim / cri-dockerd) puts on a
// Kubernetes container.
const (
	LabelPodName       = "io.kubernetes.pod.name"
	LabelPodNamespace  = "io.kubernetes.pod.namespace"
	LabelPodUID        = "io.kubernetes.pod.uid"
	LabelContainerName = "io.kubernetes.container.name"
	// dockershim and cri-dockerd mark the pause container with this label
	// set to "podsandbox" (and name it "POD").
	labelDockerType = "io.kubernetes.docker.type"
)

var (
	// ErrNotFound: the runtime answered and does not know the container
	// (or pod). Another runtime on the node may.
	ErrNotFound = errors.New("not known to the runtime")
	// ErrNoPid: the runtime knows the container but cannot tell its init
	// pid (not running, or a runtime that does not report it).
	ErrNoPid = errors.New("no init pid")
	// ErrNothingToResolve: the ID names neither a container nor a pod.
	ErrNothingToResolve = errors.New("no container or pod ID to resolve")
)

// Resolver names what a cgroup path identifies. On error the Identity still
// carries what the ID itself told (runtime, container ID, pod UID), so a
// caller that ignores the error reports no less than the path gave.
type Resolver interface {
	Resolve(ctx context.Context, id ID) (event.Identity, error)
}

// Info is everything a runtime tells about one container (or, for a
// pod-level ID, about its pod: Identity only).
type Info struct {
	event.Identity
	// Sandbox: the pod's sandbox (pause) container, which must never be
	// killed. Only the runtime can tell.
	Sandbox bool
	// Running as the runtime last saw it.
	Running bool
	// InitPid is the container's first process in the node's pid
	// namespace, 0 when unknown or not running.
	InitPid int
}

// Inspector is a Resolver that can tell more than names. Docker, CRI and
// Cached implement it.
type Inspector interface {
	Resolver
	Inspect(ctx context.Context, id ID) (Info, error)
}

// runtimeNamer is implemented by resolvers that serve one runtime only, so
// Cached can skip them for IDs the path already attributes elsewhere.
type runtimeNamer interface {
	Runtime() string
}

// fromPath is what an ID alone contributes to an Identity.
func fromPath(id ID) event.Identity {
	return event.Identity{Runtime: id.Runtime, ContainerID: id.ContainerID, PodUID: id.PodUID}
}

// merge fills what the runtime left empty from the path.
func merge(got event.Identity, id ID) event.Identity {
	if got.Runtime == "" {
		got.Runtime = id.Runtime
	}
	if got.ContainerID == "" {
		got.ContainerID = id.ContainerID
	}
	if got.PodUID == "" {
		got.PodUID = id.PodUID
	}
	return got
}

// initPid turns an Info into the answer InitPid gives.
func initPid(info Info, err error) (int, error) {
	if err != nil {
		return 0, err
	}
	if !info.Running || info.InitPid <= 0 {
		return 0, ErrNoPid
	}
	return info.InitPid, nil
}

// short abbreviates a container ID in messages the way runtimes print them.
func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
