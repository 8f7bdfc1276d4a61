package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/oom-guard/oom-guard/internal/event"
)

// DefaultDockerSocket is where dockerd listens unless told otherwise.
const DefaultDockerSocket = "/var/run/docker.sock"

// maxDockerReply bounds what is read from the daemon: an inspect reply is a
// few KiB to a few hundred; anything larger is not one we should trust.
const maxDockerReply = 8 << 20

// Docker asks the Docker Engine API over its unix socket. It speaks plain
// HTTP with no SDK: the two calls it needs are stable since API 1.24.
type Docker struct {
	socket string
	client *http.Client
}

// NewDocker returns a resolver for the daemon at socket (a path;
// DefaultDockerSocket when empty). Nothing is dialled until the first call.
func NewDocker(socket string) *Docker {
	if socket == "" {
		socket = DefaultDockerSocket
	}
	socket = strings.TrimPrefix(socket, "unix://")
	dialer := &net.Dialer{}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns: 2,
	}
	// No client timeout: every call carries the caller's context, and
	// Cached bounds it.
	return &Docker{socket: socket, client: &http.Client{Transport: tr}}
}

// Socket is the path this resolver talks to.
func (d *Docker) Socket() string { return d.socket }

// Runtime is "docker": Cached skips this resolver for IDs a path
// attributes to another runtime.
func (d *Docker) Runtime() string { return RuntimeDocker }

// Close drops idle connections to the daemon.
func (d *Docker) Close() error {
	d.client.CloseIdleConnections()
	return nil
}

// dockerInspect is the part of GET /containers/{id}/json we use.
type dockerInspect struct {
	ID    string `json:"Id"`
	Name  string `json:"Name"`
	State *struct {
		Running bool   `json:"Running"`
		Pid     int    `json:"Pid"`
		Status  string `json:"Status"`
	} `json:"State"`
	Config *struct {
		Labels map[string]string `json:"Labels"`
	} `json:"Config"`
}

// dockerSummary is one element of GET /containers/json.
type dockerSummary struct {
	ID     string            `json:"Id"`
	Names  []string          `json:"Names"`
	Labels map[string]string `json:"Labels"`
}

// Resolve names the container (and its pod, for a container dockershim or
// cri-dockerd made), or for a pod-level ID the pod.
func (d *Docker) Resolve(ctx context.Context, id ID) (event.Identity, error) {
	info, err := d.Inspect(ctx, id)
	return merge(info.Identity, id), err
}

// InitPid is the container's init process as the daemon reports it.
func (d *Docker) InitPid(ctx context.Context, id ID) (int, error) {
	if id.ContainerID == "" {
		return 0, fmt.Errorf("docker %s: %w", d.socket, ErrNothingToResolve)
	}
	pid, err := initPid(d.Inspect(ctx, id))
	if errors.Is(err, ErrNoPid) {
		return 0, fmt.Errorf("docker %s: container %s: %w", d.socket, short(id.ContainerID), err)
	}
	return pid, err
}

// Inspect asks the daemon about the container, or about the pod for a
// pod-level ID (by dockershim's pod UID label).
func (d *Docker) Inspect(ctx context.Context, id ID) (Info, error) {
	switch {
	case id.ContainerID != "":
		return d.inspectContainer(ctx, id.ContainerID)
	case id.PodUID != "":
		return d.inspectPod(ctx, id.PodUID)
	}
	return Info{}, fmt.Errorf("docker %s: %w", d.socket, ErrNothingToResolve)
}

func (d *Docker) inspectContainer(ctx context.Context, cid string) (Info, error) {
	// The daemon also accepts names and prefixes; only a full ID is sure to
	// mean the container the cgroup belongs to.
	if !isHex(cid, 64) {
		return Info{}, fmt.Errorf("docker %s: %q is not a container ID", d.socket, cid)
	}
	var r dockerInspect
	if err := d.get(ctx, "/containers/"+cid+"/json", nil, &r); err != nil {
		return Info{}, fmt.Errorf("docker %s: inspect container %s: %w", d.socket, short(cid), err)
	}
	if r.ID != cid || r.State == nil || r.State.Pid < 0 {
		return Info{}, fmt.Errorf("docker %s: inspect container %s: malformed reply (Id %q)", d.socket, short(cid), short(r.ID))
	}
	var labels map[string]string
	if r.Config != nil {
		labels = r.Config.Labels
	}
	info := Info{
		Identity: event.Identity{
			Runtime:       RuntimeDocker,
			ContainerID:   r.ID,
			ContainerName: strings.TrimPrefix(r.Name, "/"),
		},
		Sandbox: labels[labelDockerType] == "podsandbox",
		Running: r.State.Running,
	}
	if r.State.Running {
		info.InitPid = r.State.Pid
	}
	applyKubeLabels(&info.Identity, labels)
	return info, nil
}

func (d *Docker) inspectPod(ctx context.Context, uid string) (Info, error) {
	filters, err := json.Marshal(map[string][]string{"label": {LabelPodUID + "=" + uid}})
	if err != nil {
		return Info{}, fmt.Errorf("docker %s: pod %s: %w", d.socket, uid, err)
	}
	var list []dockerSummary
	q := url.Values{"all": {"1"}, "filters": {string(filters)}}
	if err := d.get(ctx, "/containers/json", q, &list); err != nil {
		return Info{}, fmt.Errorf("docker %s: list containers of pod %s: %w", d.socket, uid, err)
	}
	for _, c := range list {
		if c.Labels[LabelPodUID] != uid {
			continue
		}
		info := Info{Identity: event.Identity{Runtime: RuntimeDocker, PodUID: uid}}
		applyKubeLabels(&info.Identity, c.Labels)
		info.ContainerName = "" // a pod-level cgroup is no one container
		return info, nil
	}
	return Info{}, fmt.Errorf("docker %s: pod %s: %w", d.socket, uid, ErrNotFound)
}

// applyKubeLabels takes pod and container names from the CRI labels, which
// dockershim and cri-dockerd put on the containers they create.
func applyKubeLabels(id *event.Identity, labels map[string]string) {
	if v := labels[LabelPodName]; v != "" {
		id.PodName = v
	}
	if v := labels[LabelPodNamespace]; v != "" {
		id.PodNamespace = v
	}
	if v := labels[LabelPodUID]; v != "" {
		id.PodUID = v
	}
	if v := labels[LabelContainerName]; v != "" {
		id.ContainerName = v
	}
}

// get does one GET and decodes a JSON reply into out.
func (d *Docker) get(ctx context.Context, path string, q url.Values, out any) error {
	u := url.URL{Scheme: "http", Host: "docker", Path: path}
	if q != nil {
		u.RawQuery = q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDockerReply+1))
	if err != nil {
		return fmt.Errorf("read reply: %w", err)
	}
	if len(body) > maxDockerReply {
		return fmt.Errorf("reply larger than %d bytes", maxDockerReply)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return fmt.Errorf("%w (%s)", ErrNotFound, dockerMessage(body))
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, dockerMessage(body))
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("malformed reply: %w", err)
	}
	return nil
}

// dockerMessage extracts the daemon's {"message": ...} error text, short.
func dockerMessage(body []byte) string {
	var e struct {
		Message string `json:"message"`
	}
	msg := strings.TrimSpace(string(body))
	if json.Unmarshal(body, &e) == nil && e.Message != "" {
		msg = e.Message
	}
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	return msg
}
