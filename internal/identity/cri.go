package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/oom-guard/oom-guard/internal/event"
)

// Default CRI sockets.
const (
	DefaultContainerdSocket = "/run/containerd/containerd.sock"
	DefaultCRIOSocket       = "/var/run/crio/crio.sock"
)

// maxCRIReply bounds one reply: a verbose status carries the OCI spec,
// tens of KiB.
const maxCRIReply = 16 << 20

// CRI asks a CRI runtime (containerd's CRI plugin, CRI-O) over gRPC.
type CRI struct {
	socket string

	mu      sync.Mutex
	conn    *grpc.ClientConn
	client  runtimeapi.RuntimeServiceClient
	runtime string // learnt from Version: "containerd", "crio"
}

// NewCRI returns a resolver for the CRI runtime at socket (a path). The
// connection is made on first use, so a runtime that starts later is found.
func NewCRI(socket string) *CRI {
	return &CRI{socket: strings.TrimPrefix(socket, "unix://")}
}

// Socket is the path this resolver talks to.
func (c *CRI) Socket() string { return c.socket }

// Runtime is the runtime's name once a call has learnt it, "" before: an
// unknown runtime is asked about everything.
func (c *CRI) Runtime() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.runtime
}

// Close closes the connection.
func (c *CRI) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	err := c.conn.Close()
	c.conn, c.client = nil, nil
	return err
}

func (c *CRI) rpc() (runtimeapi.RuntimeServiceClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client != nil {
		return c.client, nil
	}
	// grpc.NewClient does not dial: an absent socket fails the first RPC
	// at once (no WaitForReady), which is what the kill path wants.
	conn, err := grpc.NewClient("unix://"+c.socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxCRIReply)))
	if err != nil {
		return nil, fmt.Errorf("cri %s: %w", c.socket, err)
	}
	c.conn, c.client = conn, runtimeapi.NewRuntimeServiceClient(conn)
	return c.client, nil
}

// Warm connects and learns the runtime's name ahead of the first lookup,
// which otherwise pays for both: on a busy node (seen on the cgroup v2
// test node, as its kubelet restarted the container just killed) that
// first lookup outlasted --runtime-timeout-ms, and the guard's first Event
// went on the Node for want of the pod's name.
func (c *CRI) Warm(ctx context.Context) error {
	rc, err := c.rpc()
	if err != nil {
		return err
	}
	if c.learnRuntime(ctx, rc) == "" {
		return fmt.Errorf("cri %s: the runtime did not say its name", c.socket)
	}
	return nil
}

// learnRuntime asks for the runtime's name once, so that Identity.Runtime
// says which runtime answered. Failure is not fatal: the name is a nicety.
func (c *CRI) learnRuntime(ctx context.Context, rc runtimeapi.RuntimeServiceClient) string {
	c.mu.Lock()
	rt := c.runtime
	c.mu.Unlock()
	if rt != "" {
		return rt
	}
	v, err := rc.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		return ""
	}
	switch v.GetRuntimeName() {
	case "containerd":
		rt = RuntimeContainerd
	case "cri-o":
		rt = RuntimeCRIO
	default:
		return ""
	}
	c.mu.Lock()
	c.runtime = rt
	c.mu.Unlock()
	return rt
}

// Resolve names the container and its pod, or for a pod-level ID the pod.
func (c *CRI) Resolve(ctx context.Context, id ID) (event.Identity, error) {
	info, err := c.Inspect(ctx, id)
	return merge(info.Identity, id), err
}

// InitPid is the container's init process, from the runtime's verbose
// status (containerd and CRI-O both report it there).
func (c *CRI) InitPid(ctx context.Context, id ID) (int, error) {
	if id.ContainerID == "" {
		return 0, fmt.Errorf("cri %s: %w", c.socket, ErrNothingToResolve)
	}
	pid, err := initPid(c.Inspect(ctx, id))
	if errors.Is(err, ErrNoPid) {
		return 0, fmt.Errorf("cri %s: container %s: %w", c.socket, short(id.ContainerID), err)
	}
	return pid, err
}

// Inspect asks about the container (trying the pod sandboxes when no
// container has that ID: a sandbox has its own cgroup too), or for a
// pod-level ID about the pod.
func (c *CRI) Inspect(ctx context.Context, id ID) (Info, error) {
	rc, err := c.rpc()
	if err != nil {
		return Info{}, err
	}
	switch {
	case id.ContainerID != "":
		if !isHex(id.ContainerID, 64) {
			return Info{}, fmt.Errorf("cri %s: %q is not a container ID", c.socket, id.ContainerID)
		}
		info, err := c.container(ctx, rc, id.ContainerID)
		if errors.Is(err, ErrNotFound) {
			info, err = c.sandbox(ctx, rc, id.ContainerID)
		}
		if err != nil {
			return Info{}, fmt.Errorf("cri %s: container %s: %w", c.socket, short(id.ContainerID), err)
		}
		info.Runtime = c.learnRuntime(ctx, rc)
		return info, nil
	case id.PodUID != "":
		info, err := c.pod(ctx, rc, id.PodUID)
		if err != nil {
			return Info{}, fmt.Errorf("cri %s: pod %s: %w", c.socket, id.PodUID, err)
		}
		info.Runtime = c.learnRuntime(ctx, rc)
		return info, nil
	}
	return Info{}, fmt.Errorf("cri %s: %w", c.socket, ErrNothingToResolve)
}

func (c *CRI) container(ctx context.Context, rc runtimeapi.RuntimeServiceClient, cid string) (Info, error) {
	resp, err := rc.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: cid, Verbose: true})
	if err != nil {
		return Info{}, grpcErr(err)
	}
	st := resp.GetStatus()
	if st == nil || st.GetId() != cid {
		return Info{}, fmt.Errorf("malformed ContainerStatus reply (id %q)", short(st.GetId()))
	}
	info := Info{
		Identity: event.Identity{ContainerID: cid, ContainerName: st.GetMetadata().GetName()},
		Running:  st.GetState() == runtimeapi.ContainerState_CONTAINER_RUNNING,
	}
	applyKubeLabels(&info.Identity, st.GetLabels())
	if info.Running {
		info.InitPid = verbosePid(resp.GetInfo())
	}
	return info, nil
}

func (c *CRI) sandbox(ctx context.Context, rc runtimeapi.RuntimeServiceClient, sid string) (Info, error) {
	resp, err := rc.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sid, Verbose: true})
	if err != nil {
		return Info{}, grpcErr(err)
	}
	st := resp.GetStatus()
	if st == nil || st.GetId() != sid {
		return Info{}, fmt.Errorf("malformed PodSandboxStatus reply (id %q)", short(st.GetId()))
	}
	md := st.GetMetadata()
	info := Info{
		Identity: event.Identity{ContainerID: sid, PodName: md.GetName(), PodNamespace: md.GetNamespace(), PodUID: md.GetUid()},
		Sandbox:  true,
		Running:  st.GetState() == runtimeapi.PodSandboxState_SANDBOX_READY,
	}
	if info.Running {
		info.InitPid = verbosePid(resp.GetInfo())
	}
	return info, nil
}

func (c *CRI) pod(ctx context.Context, rc runtimeapi.RuntimeServiceClient, uid string) (Info, error) {
	resp, err := rc.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{
		Filter: &runtimeapi.PodSandboxFilter{LabelSelector: map[string]string{LabelPodUID: uid}},
	})
	if err != nil {
		return Info{}, grpcErr(err)
	}
	// The filter is the runtime's to apply; check it was.
	for _, sb := range resp.GetItems() {
		md := sb.GetMetadata()
		if md.GetUid() != uid && sb.GetLabels()[LabelPodUID] != uid {
			continue
		}
		return Info{Identity: event.Identity{PodName: md.GetName(), PodNamespace: md.GetNamespace(), PodUID: uid}}, nil
	}
	return Info{}, ErrNotFound
}

// verbosePid reads the pid from a verbose status's "info" JSON, which both
// containerd and CRI-O fill; 0 when absent or malformed.
func verbosePid(info map[string]string) int {
	raw, ok := info["info"]
	if !ok {
		return 0
	}
	var v struct {
		Pid int `json:"pid"`
	}
	if json.Unmarshal([]byte(raw), &v) != nil || v.Pid < 0 {
		return 0
	}
	return v.Pid
}

// grpcErr maps the runtime's "no such container" to ErrNotFound. Older
// CRI-O releases say it with code Unknown, so the text is checked too.
func grpcErr(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	if st.Code() == codes.NotFound || (st.Code() == codes.Unknown && strings.Contains(st.Message(), "not found")) {
		return fmt.Errorf("%w (%s)", ErrNotFound, st.Message())
	}
	return err
}
