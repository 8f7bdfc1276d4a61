package identity

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/oom-guard/oom-guard/internal/testenv"
)

// No runtime on the socket: an error naming it, at once, and the path's
// IDs kept.
func TestCRIUnreachable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "containerd.sock")
	r := NewCRI(sock)
	defer r.Close()
	id := ID{Runtime: RuntimeContainerd, ContainerID: strings.Repeat("ab", 32), PodUID: "3d6329e5-455f-11e9-a7e5-06925242d7ea", QoS: QoSBurstable}
	start := time.Now()
	got, err := r.Resolve(context.Background(), id)
	if err == nil || !strings.Contains(err.Error(), sock) {
		t.Fatalf("err = %v; want one naming %s", err, sock)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("took %v", time.Since(start))
	}
	if got != fromPath(id) {
		t.Fatalf("identity %+v; want the path's", got)
	}
	for _, id := range []ID{{PodUID: id.PodUID}, {ContainerID: id.ContainerID}} {
		if _, err := r.InitPid(context.Background(), id); err == nil || !strings.Contains(err.Error(), sock) {
			t.Fatalf("InitPid(%+v) err = %v", id, err)
		}
	}
	if _, err := r.Resolve(context.Background(), ID{ContainerID: "not-an-id"}); err == nil {
		t.Fatal("a non-ID was looked up")
	}
	if r.Runtime() != "" {
		t.Fatalf("runtime %q learnt from nobody", r.Runtime())
	}
	if err := r.Warm(context.Background()); err == nil || !strings.Contains(err.Error(), sock) {
		t.Fatalf("Warm with no runtime: %v; want an error naming %s", err, sock)
	}
}

func TestVerbosePid(t *testing.T) {
	for in, want := range map[string]int{
		`{"pid": 1234, "sandboxID": "x"}`: 1234,
		`{"pid": -1}`:                     0,
		`{"pid": "12"}`:                   0,
		`not json`:                        0,
		``:                                0,
		`{"runtimeSpec": {}}`:             0,
	} {
		if got := verbosePid(map[string]string{"info": in}); got != want {
			t.Errorf("verbosePid(%q) = %d; want %d", in, got, want)
		}
	}
	if verbosePid(nil) != 0 {
		t.Error("nil info")
	}
}

// A real containerd with its CRI plugin: a pod sandbox (host network) and
// one container, as the kubelet would make them, named back through CRI.
func TestCRIRealContainerd(t *testing.T) {
	ctd := startContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	const uid = "3d6329e5-455f-11e9-a7e5-06925242d7ea"
	podLabels := map[string]string{LabelPodName: "web-0", LabelPodNamespace: "shop", LabelPodUID: uid}
	sbConfig := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "web-0", Namespace: "shop", Uid: uid},
		LogDirectory: filepath.Join(ctd.dir, "logs"),
		Labels:       podLabels,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			// A custom cgroup root, as the kubelet's --cgroup-root makes it;
			// under the test's own name so cleanup knows what is its.
			CgroupParent: ctd.cgroupRoot + "/kubepods/burstable/pod" + uid,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			},
		},
	}
	sb, err := ctd.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sbConfig})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, ctd.log())
	}
	ctrLabels := map[string]string{LabelContainerName: "app"}
	for k, v := range podLabels {
		ctrLabels[k] = v
	}
	created, err := ctd.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: sb.PodSandboxId,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
			Image:    &runtimeapi.ImageSpec{Image: testImage},
			Command:  []string{"/bin/sleep", "3600"},
			Labels:   ctrLabels,
			LogPath:  "app.log",
			Linux: &runtimeapi.LinuxContainerConfig{
				Resources: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 64 << 20},
				SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
					NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
				},
			},
		},
		SandboxConfig: sbConfig,
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v\n%s", err, ctd.log())
	}
	if _, err := ctd.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: created.ContainerId}); err != nil {
		t.Fatalf("StartContainer: %v\n%s", err, ctd.log())
	}
	cid := created.ContainerId

	r := NewCRI(ctd.socket)
	defer r.Close()
	// Warm connects and learns the runtime before any lookup.
	if err := r.Warm(ctx); err != nil || r.Runtime() != RuntimeContainerd {
		t.Fatalf("Warm: %v, runtime %q", err, r.Runtime())
	}

	// The container: its cgroup path parses, and CRI names it.
	pid, err := r.InitPid(ctx, ID{ContainerID: cid})
	if err != nil || pid <= 0 {
		t.Fatalf("InitPid: %d, %v", pid, err)
	}
	cg := memoryCgroup(t, pid)
	id, ok := FromPath(cg)
	want := ID{ContainerID: cid, PodUID: uid, QoS: QoSBurstable}
	if !ok || id != want {
		t.Fatalf("FromPath(%s) = %+v, %v; want %+v", cg, id, ok, want)
	}
	info, err := r.Inspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if info.Runtime != RuntimeContainerd || info.ContainerID != cid || info.ContainerName != "app" ||
		info.PodName != "web-0" || info.PodNamespace != "shop" || info.PodUID != uid ||
		info.Sandbox || !info.Running || info.InitPid != pid {
		t.Fatalf("Inspect = %+v", info)
	}
	if r.Runtime() != RuntimeContainerd {
		t.Fatalf("Runtime() = %q after a call", r.Runtime())
	}

	// The sandbox has its own cgroup in the pod, and must be known as such.
	sbInfo, err := r.Inspect(ctx, ID{ContainerID: sb.PodSandboxId})
	if err != nil || !sbInfo.Sandbox || sbInfo.PodName != "web-0" || sbInfo.PodUID != uid || !sbInfo.Running || sbInfo.InitPid <= 0 {
		t.Fatalf("sandbox Inspect = %+v, %v", sbInfo, err)
	}
	sbID, ok := FromPath(memoryCgroup(t, sbInfo.InitPid))
	if !ok || sbID.ContainerID != sb.PodSandboxId || sbID.PodUID != uid {
		t.Fatalf("sandbox cgroup parses to %+v, %v", sbID, ok)
	}

	// The pod-level cgroup names the pod.
	podCg := filepath.Dir(cg)
	podID, ok := FromPath(podCg)
	if !ok || podID.ContainerID != "" || podID.PodUID != uid {
		t.Fatalf("FromPath(%s) = %+v, %v", podCg, podID, ok)
	}
	got, err := r.Resolve(ctx, podID)
	if err != nil || got.PodName != "web-0" || got.PodNamespace != "shop" || got.ContainerName != "" {
		t.Fatalf("pod Resolve = %+v, %v", got, err)
	}

	// Through Cached, behind a Docker resolver that is skipped for a
	// containerd-attributed ID and fails for an unattributed one.
	c := NewCached(time.Minute, 16, NewDocker(filepath.Join(ctd.dir, "no-docker.sock")), r)
	c.Timeout = 10 * time.Second
	if got, err := c.Resolve(ctx, id); err != nil || got.ContainerName != "app" || got.PodName != "web-0" {
		t.Fatalf("Cached Resolve = %+v, %v", got, err)
	}

	// Stopped: not running, no pid; removed: not found.
	if _, err := ctd.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: cid, Timeout: 0}); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	info, err = r.Inspect(ctx, id)
	if err != nil || info.Running || info.InitPid != 0 || info.ContainerName != "app" {
		t.Fatalf("Inspect after stop = %+v, %v", info, err)
	}
	if _, err := r.InitPid(ctx, id); !errors.Is(err, ErrNoPid) {
		t.Fatalf("InitPid after stop: %v", err)
	}
	if _, err := ctd.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: cid}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	if _, err := r.Resolve(ctx, id); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), ctd.socket) {
		t.Fatalf("Resolve after remove: %v; want ErrNotFound naming the socket", err)
	}
	if _, err := r.Resolve(ctx, ID{PodUID: "00000000-0000-0000-0000-000000000000"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown pod: %v", err)
	}
}

// memoryCgroup is pid's path in the v1 memory hierarchy, absolute.
func memoryCgroup(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && (parts[1] == "memory" || strings.HasPrefix(parts[1], "memory,") || strings.Contains(parts[1], ",memory")) {
			return filepath.Join(testenv.V1MemoryRoot, parts[2])
		}
	}
	t.Fatalf("pid %d has no memory cgroup:\n%s", pid, b)
	return ""
}

// The image both the sandbox and the container run: busybox, with an
// entrypoint that waits (a pause container need do no more).
const testImage = "docker.io/library/oomguard-busybox:cri-test"

const sharedShimDir = "/run/containerd"

type containerd struct {
	dir        string
	socket     string
	cgroupRoot string // the test's own top cgroup, e.g. /oomguard-cri-1234
	logPath    string
	rt         runtimeapi.RuntimeServiceClient
}

func (c *containerd) log() string {
	b, _ := os.ReadFile(c.logPath)
	if len(b) > 6000 {
		b = b[len(b)-6000:]
	}
	return string(b)
}

// startContainerd runs a private containerd (own root, state, sockets,
// cgroups) with the CRI plugin, imports the test image, and undoes all of
// it when the test ends: pods removed, daemon and shims stopped, mounts
// and cgroups removed, then the directory.
func startContainerd(t *testing.T) *containerd {
	t.Helper()
	testenv.RequireV1(t)
	bin, err := exec.LookPath("containerd")
	if err != nil {
		testenv.Skip(t, "needs containerd (apt-get install containerd)")
	}
	ctrBin, err := exec.LookPath("ctr")
	if err != nil {
		testenv.Skip(t, "needs ctr (apt-get install containerd)")
	}
	for _, b := range []string{"containerd-shim-runc-v2", "runc"} {
		if _, err := exec.LookPath(b); err != nil {
			testenv.Skip(t, "needs "+b+" (apt-get install containerd runc)")
		}
	}
	rootfs, err := testenv.BusyboxRootfs()
	if err != nil {
		testenv.Skip(t, "needs a static busybox (apt-get install busybox-static): "+err.Error())
	}
	// Not t.TempDir: unix socket paths must stay under 108 bytes.
	dir, err := os.MkdirTemp("", "oomguard-ctd-")
	if err != nil {
		t.Fatal(err)
	}
	c := &containerd{
		dir:        dir,
		socket:     filepath.Join(dir, "containerd.sock"),
		cgroupRoot: fmt.Sprintf("/oomguard-cri-%d", os.Getpid()),
		logPath:    filepath.Join(dir, "containerd.log"),
	}
	// containerd 1.6 puts shim sockets in /run/containerd/s whatever its
	// state dir; if this test made that directory, it removes it (only
	// when empty: another containerd may have come to use it).
	_, statErr := os.Stat(sharedShimDir)
	madeShimDir := os.IsNotExist(statErr)
	t.Cleanup(func() {
		if madeShimDir {
			_ = os.Remove(sharedShimDir + "/s")
			_ = os.Remove(sharedShimDir)
		}
	})
	t.Cleanup(func() {
		unmountUnder(t, dir)
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	config := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[5]q
  # This kernel refuses negative oom_score_adj even to root; the sandbox
  # asks for -998.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %[8]q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[6]q
    conf_dir = %[7]q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.socket, c.socket+".ttrpc",
		testImage, filepath.Join(dir, "cni-bin"), filepath.Join(dir, "cni-conf"), filepath.Join(dir, "runc"))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(c.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	// Closed last (cleanups run in reverse): removing the pods needs it.
	conn, err := grpc.NewClient("unix://"+c.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Cleanup(func() {
		removeCgroupTree(t, c.cgroupRoot)
	})
	t.Cleanup(func() {
		// Pods first, while the daemon can still stop them; then the
		// daemon; then any shim it left.
		if c.rt != nil {
			removeAllPods(t, c.rt)
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		killShims(t, c.socket)
	})

	rt := runtimeapi.NewRuntimeServiceClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := rt.Version(ctx, &runtimeapi.VersionRequest{})
		cancel()
		if err == nil {
			break
		}
		select {
		case <-exited:
			t.Fatalf("containerd exited:\n%s", c.log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd CRI did not answer: %v\n%s", err, c.log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.rt = rt

	archive, err := ociArchive(rootfs, testImage, []string{"/bin/sleep", "2147483647"})
	if err != nil {
		t.Fatal(err)
	}
	archivePath := filepath.Join(dir, "image.tar")
	if err := os.WriteFile(archivePath, archive, 0o600); err != nil {
		t.Fatal(err)
	}
	imp := exec.Command(ctrBin, "--address", c.socket, "--namespace", "k8s.io",
		"images", "import", "--snapshotter", "native", archivePath)
	if out, err := imp.CombinedOutput(); err != nil {
		t.Fatalf("ctr images import: %v\n%s\n%s", err, out, c.log())
	}
	return c
}

func removeAllPods(t *testing.T, rt runtimeapi.RuntimeServiceClient) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	list, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Errorf("cleanup: list pods: %v", err)
		return
	}
	for _, sb := range list.Items {
		if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
			t.Errorf("cleanup: stop pod %s: %v", sb.Id, err)
		}
		if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
			t.Errorf("cleanup: remove pod %s: %v", sb.Id, err)
		}
	}
}

// killShims kills shims still serving our containerd (a shim outlives its
// daemon by design; a failed test must not leave them).
func killShims(t *testing.T, socket string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte("containerd-shim")) || !bytes.Contains(b, []byte(socket)) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err != nil {
			continue
		}
		t.Logf("cleanup: killing leftover shim %d", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// unmountUnder unmounts whatever is still mounted below dir, deepest first.
func unmountUnder(t *testing.T, dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			mounts = append(mounts, fields[4])
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, m := range mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil {
			t.Errorf("cleanup: unmount %s: %v", m, err)
		}
	}
}

// removeCgroupTree removes rel from every v1 hierarchy runc created it in,
// children first, killing anything left inside.
func removeCgroupTree(t *testing.T, rel string) {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, root := range roots {
		top := filepath.Join(root, rel)
		if _, err := os.Stat(top); err != nil {
			continue
		}
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if b, err := os.ReadFile(filepath.Join(dirs[i], "cgroup.procs")); err == nil {
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil {
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
			var err error
			for try := 0; try < 50; try++ {
				if err = os.Remove(dirs[i]); err == nil || os.IsNotExist(err) {
					err = nil
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil {
				t.Errorf("cleanup: remove cgroup %s: %v", dirs[i], err)
			}
		}
	}
}

// ociArchive builds an OCI image layout tar holding one image: rootfs as
// its single layer, entrypoint as its process. containerd imports it under
// the name in the io.containerd.image.name annotation.
func ociArchive(rootfs []byte, name string, entrypoint []string) ([]byte, error) {
	type desc struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int               `json:"size"`
		Annotations map[string]string `json:"annotations,omitempty"`
		Platform    map[string]string `json:"platform,omitempty"`
	}
	digest := func(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }
	layerDigest := digest(rootfs)
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config":       map[string]any{"Entrypoint": entrypoint, "Env": []string{"PATH=/bin"}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	if err != nil {
		return nil, err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        desc{MediaType: "application/vnd.oci.image.config.v1+json", Digest: digest(config), Size: len(config)},
		"layers":        []desc{{MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: layerDigest, Size: len(rootfs)}},
	})
	if err != nil {
		return nil, err
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"manifests": []desc{{
			MediaType:   "application/vnd.oci.image.manifest.v1+json",
			Digest:      digest(manifest),
			Size:        len(manifest),
			Annotations: map[string]string{"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name[strings.LastIndexByte(name, ':')+1:]},
			Platform:    map[string]string{"architecture": "amd64", "os": "linux"},
		}},
	})
	if err != nil {
		return nil, err
	}
	files := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{"blobs/sha256/" + strings.TrimPrefix(digest(config), "sha256:"), config},
		{"blobs/sha256/" + strings.TrimPrefix(digest(manifest), "sha256:"), manifest},
		{"blobs/sha256/" + strings.TrimPrefix(layerDigest, "sha256:"), rootfs},
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755}); err != nil {
			return nil, err
		}
	}
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.data))}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
