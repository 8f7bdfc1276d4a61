package identity

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/testenv"
)

// A container under the real daemon: its cgroup path parses to its ID, and
// the resolver names it and finds its init.
func TestDockerRealContainer(t *testing.T) {
	d := testenv.RequireDocker(t)
	img := d.BusyboxImage(t)
	cid := d.RunContainer(t, "--memory", "64m", img, "sleep", "3600")
	name := strings.TrimPrefix(d.Inspect(t, cid, "{{.Name}}"), "/")

	cg := d.CgroupV1(t, cid)
	if want := filepath.Join(testenv.V1MemoryRoot, "docker", cid); cg != want {
		t.Fatalf("cgroup %s, want %s (dockerd's cgroupfs driver)", cg, want)
	}
	if _, err := os.Stat(filepath.Join(cg, "memory.limit_in_bytes")); err != nil {
		t.Fatalf("container cgroup: %v", err)
	}
	id, ok := FromPath(cg)
	if !ok || id != (ID{Runtime: RuntimeDocker, ContainerID: cid}) {
		t.Fatalf("FromPath(%s) = %+v, %v", cg, id, ok)
	}

	r := NewDocker("")
	defer r.Close()
	ctx := context.Background()
	got, err := r.Resolve(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if got.ContainerName != name || got.ContainerID != cid || got.Runtime != RuntimeDocker || got.PodName != "" {
		t.Fatalf("Resolve = %+v; want name %q", got, name)
	}
	info, err := r.Inspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	wantPid, _ := strconv.Atoi(d.Inspect(t, cid, "{{.State.Pid}}"))
	if !info.Running || info.Sandbox || info.InitPid != wantPid || wantPid <= 0 {
		t.Fatalf("Inspect = %+v; want running, init pid %d", info, wantPid)
	}
	pid, err := r.InitPid(ctx, id)
	if err != nil || pid != wantPid {
		t.Fatalf("InitPid = %d, %v; want %d", pid, err, wantPid)
	}
	// The pid is the container's: its cgroup is the one we parsed.
	self, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil || !strings.Contains(string(self), ":/docker/"+cid) {
		t.Fatalf("/proc/%d/cgroup: %v\n%s", pid, err, self)
	}

	// Stopped: still named, no longer running, no init.
	d.Run(t, "kill", cid)
	deadline := time.Now().Add(20 * time.Second)
	for d.Inspect(t, cid, "{{.State.Running}}") != "false" && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	info, err = r.Inspect(ctx, id)
	if err != nil || info.Running || info.InitPid != 0 || info.ContainerName != name {
		t.Fatalf("Inspect after kill = %+v, %v", info, err)
	}
	if _, err := r.InitPid(ctx, id); !errors.Is(err, ErrNoPid) || !strings.Contains(err.Error(), DefaultDockerSocket) {
		t.Fatalf("InitPid after kill: %v; want ErrNoPid naming the socket", err)
	}

	// Gone: not found, and the path's IDs survive.
	d.Remove(t, cid)
	got, err = r.Resolve(ctx, id)
	if !errors.Is(err, ErrNotFound) || got.ContainerID != cid || got.Runtime != RuntimeDocker {
		t.Fatalf("Resolve after rm = %+v, %v; want ErrNotFound with the path's IDs", got, err)
	}
}

// Containers as dockershim / cri-dockerd made them: the CRI labels name
// the pod, and the pause container is known for what it is.
func TestDockerRealKubernetesLabels(t *testing.T) {
	d := testenv.RequireDocker(t)
	img := d.BusyboxImage(t)
	const uid = "3d6329e5-455f-11e9-a7e5-06925242d7ea"
	labels := func(ctr, typ string) []string {
		return []string{
			"--label", LabelPodName + "=web-0", "--label", LabelPodNamespace + "=shop",
			"--label", LabelPodUID + "=" + uid, "--label", LabelContainerName + "=" + ctr,
			"--label", labelDockerType + "=" + typ,
		}
	}
	sandbox := d.RunContainer(t, append(labels("POD", "podsandbox"), img, "sleep", "3600")...)
	app := d.RunContainer(t, append(labels("app", "container"), img, "sleep", "3600")...)

	r := NewDocker(DefaultDockerSocket)
	defer r.Close()
	ctx := context.Background()
	info, err := r.Inspect(ctx, ID{ContainerID: app, PodUID: uid, QoS: QoSBurstable})
	if err != nil {
		t.Fatal(err)
	}
	if info.Sandbox || info.PodName != "web-0" || info.PodNamespace != "shop" || info.PodUID != uid || info.ContainerName != "app" {
		t.Fatalf("app: %+v", info)
	}
	info, err = r.Inspect(ctx, ID{ContainerID: sandbox})
	if err != nil || !info.Sandbox || info.ContainerName != "POD" || info.PodName != "web-0" {
		t.Fatalf("sandbox: %+v, %v", info, err)
	}
	// The pod-level cgroup names the pod, and no container.
	got, err := r.Resolve(ctx, ID{PodUID: uid, QoS: QoSBurstable})
	if err != nil || got.PodName != "web-0" || got.PodNamespace != "shop" || got.ContainerName != "" || got.ContainerID != "" {
		t.Fatalf("pod: %+v, %v", got, err)
	}
	if _, err := r.Resolve(ctx, ID{PodUID: "00000000-0000-0000-0000-000000000000"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown pod: %v", err)
	}
}

// The daemon through Cached: a second lookup is served from the cache.
func TestDockerRealCached(t *testing.T) {
	d := testenv.RequireDocker(t)
	img := d.BusyboxImage(t)
	cid := d.RunContainer(t, img, "sleep", "3600")
	name := strings.TrimPrefix(d.Inspect(t, cid, "{{.Name}}"), "/")
	// CRI on a socket nobody serves comes first: it fails fast, and the
	// docker resolver still answers.
	c := NewCached(time.Minute, 16, NewCRI(filepath.Join(t.TempDir(), "none.sock")), NewDocker(""))
	c.Timeout = 5 * time.Second
	id := ID{ContainerID: cid}
	got, err := c.Resolve(context.Background(), id)
	if err != nil || got.ContainerName != name {
		t.Fatalf("Resolve = %+v, %v", got, err)
	}
	d.Remove(t, cid)
	got, err = c.Resolve(context.Background(), id)
	if err != nil || got.ContainerName != name {
		t.Fatalf("cached Resolve after rm = %+v, %v", got, err)
	}
	c.Forget(id)
	if _, err := c.Resolve(context.Background(), id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Resolve after Forget: %v; want ErrNotFound", err)
	}
}

// No daemon: an error naming the socket, quickly, and the path's IDs kept.
func TestDockerUnreachable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "docker.sock")
	r := NewDocker(sock)
	id := ID{Runtime: RuntimeDocker, ContainerID: strings.Repeat("ab", 32), PodUID: "3d6329e5-455f-11e9-a7e5-06925242d7ea"}
	start := time.Now()
	got, err := r.Resolve(context.Background(), id)
	if err == nil || !strings.Contains(err.Error(), sock) {
		t.Fatalf("err = %v; want one naming %s", err, sock)
	}
	if time.Since(start) > time.Second {
		t.Fatalf("took %v", time.Since(start))
	}
	if got != (fromPath(id)) {
		t.Fatalf("identity %+v; want the path's %+v", got, fromPath(id))
	}
	if _, err := r.InitPid(context.Background(), id); err == nil || !strings.Contains(err.Error(), sock) {
		t.Fatalf("InitPid err = %v", err)
	}
	if _, err := r.Resolve(context.Background(), ID{ContainerID: "../../etc"}); err == nil {
		t.Fatal("a non-ID was looked up")
	}
}

// A daemon that answers nonsense is an error, never a panic or a wrong name.
func TestDockerMalformedReplies(t *testing.T) {
	cid := strings.Repeat("cd", 32)
	replies := []struct {
		status int
		body   string
	}{
		{200, ""},
		{200, "not json"},
		{200, "null"},
		{200, `{"Id": "` + cid + `"}`}, // no State
		{200, `{"Id": "` + strings.Repeat("ef", 32) + `", "State": {}}`}, // another container
		{200, `{"Id": "` + cid + `", "State": {"Pid": -5}}`},
		{200, `{"Id": 7}`},
		{200, `[]`},
		{500, `{"message": "boom"}`},
		{404, `garbage`},
		{200, `{"Id": "` + cid + `", "State": {"Running": true, "Pid": 1}, "Config": {"Labels": "x"}}`},
	}
	for i, rep := range replies {
		sock := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(rep.status)
			fmt.Fprint(w, rep.body)
		}))
		r := NewDocker(sock)
		info, err := r.Inspect(context.Background(), ID{ContainerID: cid})
		if err == nil {
			t.Errorf("reply %d (%d %q): no error, got %+v", i, rep.status, rep.body, info)
		} else if !strings.Contains(err.Error(), sock) {
			t.Errorf("reply %d: error does not name the socket: %v", i, err)
		}
		if _, err := r.Inspect(context.Background(), ID{PodUID: "3d6329e5-455f-11e9-a7e5-06925242d7ea"}); err == nil && rep.status != 200 {
			t.Errorf("reply %d: pod lookup: no error", i)
		}
		r.Close()
	}
}

// serveUnix serves h on a unix socket in a temp dir until the test ends.
func serveUnix(t *testing.T, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "d.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}
