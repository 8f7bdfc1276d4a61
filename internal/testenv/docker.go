package testenv

// A real Docker daemon for tests.
//
// Where it runs: on the machine's default socket, /var/run/docker.sock,
// with dockerd's default data root (/var/lib/docker). That is the socket
// the guard's Docker resolver uses by default, so tests exercise the real
// default; and images persist, so the busybox image is built once per
// machine. If a daemon already answers there (systemd's, a developer's)
// the tests use it and never stop it.
//
// Otherwise RequireDocker starts `dockerd --iptables=false --bridge=none
// --ip-forward=false` (no network, no host firewall or sysctl changes),
// detached, with its exec root (runtime state, its containerd's sockets)
// and pidfile under /run/oomguard-test, logging to
// /run/oomguard-test/dockerd.log, and records its pid in
// /run/oomguard-test/dockerd.pid: that file marks the daemon as the
// harness's to stop, and stopping it removes its exec root. Several test binaries (go test ./... runs them in
// parallel) share it: each holds a shared flock on dockerd.users for as
// long as it uses the daemon, and Cleanup, called from TestMain after
// m.Run, stops the daemon only when it can take that lock exclusively, i.e.
// when it is the last user. A binary that dies without Cleanup (timeout
// panic, SIGKILL) leaves the daemon running; its lock goes with it, so the
// next run's Cleanup stops it.
//
// Every test package that calls RequireDocker must therefore have:
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		testenv.Cleanup()
//		os.Exit(code)
//	}

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// DockerSocket is the socket the harness uses (and starts dockerd on).
const DockerSocket = "/var/run/docker.sock"

// BusyboxTag is the local image BusyboxImage builds.
const BusyboxTag = "oomguard-busybox:test"

// The harness's state, shared by every test binary on the machine.
const (
	harnessDir    = "/run/oomguard-test"
	harnessLock   = harnessDir + "/dockerd.lock"  // held while starting, stopping, importing
	harnessUsers  = harnessDir + "/dockerd.users" // shared lock per user process
	harnessPid    = harnessDir + "/dockerd.pid"   // present: the harness started that dockerd
	harnessLog    = harnessDir + "/dockerd.log"
	harnessExec   = harnessDir + "/docker-exec"       // dockerd --exec-root
	harnessDPid   = harnessDir + "/docker-daemon.pid" // dockerd --pidfile
	dockerdWait   = 90 * time.Second
	dockerdStop   = 30 * time.Second
	busyboxSource = "/bin/busybox" // Debian's busybox-static
)

// Docker is a running daemon the tests may use.
type Docker struct {
	Socket string // unix socket path
	CLI    string // the docker client binary
}

var docker struct {
	mu    sync.Mutex
	d     *Docker
	err   string   // a failed start is not retried by every test
	users *os.File // holds the shared lock while this process uses the daemon
}

// RequireDocker returns a running Docker daemon, starting one if none
// answers on DockerSocket. A missing docker or dockerd binary is a Skip (a
// failure under CI=true). The daemon is stopped by Cleanup (see above), not
// at the end of the test.
func RequireDocker(t testing.TB) *Docker {
	t.Helper()
	RequireRoot(t)
	cli, err := exec.LookPath("docker")
	if err != nil {
		Skip(t, "needs the docker client (apt-get install docker.io)")
	}
	dockerd, err := exec.LookPath("dockerd")
	if err != nil {
		Skip(t, "needs dockerd (apt-get install docker.io)")
	}
	docker.mu.Lock()
	defer docker.mu.Unlock()
	if docker.d != nil {
		return docker.d
	}
	if docker.err != "" {
		t.Fatal(docker.err)
	}
	if err := acquireDocker(dockerd); err != nil {
		docker.err = "docker daemon: " + err.Error()
		t.Fatal(docker.err)
	}
	docker.d = &Docker{Socket: DockerSocket, CLI: cli}
	return docker.d
}

func acquireDocker(dockerd string) error {
	if err := os.MkdirAll(harnessDir, 0o700); err != nil {
		return err
	}
	unlock, err := lockHarness()
	if err != nil {
		return err
	}
	defer unlock()
	users, err := os.OpenFile(harnessUsers, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	// Never blocks: exclusive holders of this lock hold harnessLock too.
	if err := unix.Flock(int(users.Fd()), unix.LOCK_SH); err != nil {
		users.Close()
		return fmt.Errorf("lock %s: %w", harnessUsers, err)
	}
	if pingDocker(DockerSocket, 2*time.Second) == nil {
		docker.users = users
		return nil
	}
	if err := startDockerd(dockerd); err != nil {
		users.Close()
		return err
	}
	docker.users = users
	return nil
}

// lockHarness takes the machine-wide harness lock.
func lockHarness() (func(), error) {
	f, err := os.OpenFile(harnessLock, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", harnessLock, err)
	}
	return func() { f.Close() }, nil
}

func startDockerd(bin string) error {
	// A daemon we started earlier may be alive but not answering yet (or
	// hung): replace it rather than start a second one on the same root.
	stopHarnessDockerd()
	logf, err := os.OpenFile(harnessLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "\n=== %s: started by test pid %d\n", time.Now().Format(time.RFC3339), os.Getpid())
	cmd := exec.Command(bin, "--iptables=false", "--ip-forward=false", "--bridge=none",
		"--host=unix://"+DockerSocket, "--exec-root="+harnessExec, "--pidfile="+harnessDPid)
	// Not the test's stdout: go test waits for every holder of that pipe,
	// and the daemon outlives this process when other binaries use it.
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	pid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	if err := os.WriteFile(harnessPid, []byte(strconv.Itoa(pid)), 0o600); err != nil {
		_ = cmd.Process.Kill()
		return err
	}
	deadline := time.Now().Add(dockerdWait)
	for {
		select {
		case err := <-exited:
			os.Remove(harnessPid)
			return fmt.Errorf("dockerd exited (%v); log:\n%s", err, logTail(harnessLog))
		default:
		}
		if pingDocker(DockerSocket, time.Second) == nil {
			return nil
		}
		if time.Now().After(deadline) {
			stopHarnessDockerd()
			return fmt.Errorf("dockerd did not answer on %s within %v; log:\n%s", DockerSocket, dockerdWait, logTail(harnessLog))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Cleanup releases what this process holds of the shared Docker daemon
// and stops the daemon if the harness started it and no other test binary
// still uses it. Call it from TestMain after m.Run; safe to call when
// RequireDocker was never called, and more than once.
func Cleanup() {
	docker.mu.Lock()
	defer docker.mu.Unlock()
	if docker.users == nil {
		return
	}
	unlock, err := lockHarness()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv: cleanup:", err)
		docker.users.Close()
		docker.users, docker.d = nil, nil
		return
	}
	defer unlock()
	docker.users.Close()
	docker.users, docker.d = nil, nil
	f, err := os.OpenFile(harnessUsers, os.O_RDWR, 0)
	if err != nil {
		return
	}
	defer f.Close()
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		return // another test binary still uses the daemon; the last one stops it
	}
	stopHarnessDockerd()
}

// stopHarnessDockerd stops the daemon named by the pid file, if it is
// still a dockerd (the pid may have been reused since).
func stopHarnessDockerd() {
	b, err := os.ReadFile(harnessPid)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		os.Remove(harnessPid)
		return
	}
	if !isDockerd(pid) {
		os.Remove(harnessPid)
		return
	}
	// SIGTERM lets dockerd stop its containers and its containerd.
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(dockerdStop)
	for isDockerd(pid) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if isDockerd(pid) {
		fmt.Fprintf(os.Stderr, "testenv: dockerd %d ignored SIGTERM for %v; killing it\n", pid, dockerdStop)
		_ = syscall.Kill(pid, syscall.SIGKILL)
		for i := 0; i < 100 && isDockerd(pid); i++ {
			time.Sleep(50 * time.Millisecond)
		}
	}
	os.Remove(harnessPid)
	os.Remove(harnessDPid)
	removeExecRoot()
	// dockerd's containerd (1.6) puts shim sockets in /run/containerd/s
	// whatever its own state dir is; drop the directories if they are
	// empty (they are not if another containerd uses them, so this never
	// takes anything from a daemon that is not ours).
	_ = os.Remove("/run/containerd/s")
	_ = os.Remove("/run/containerd")
	// Likewise the plugin directory dockerd makes whatever its exec root,
	// and the parent cgroup it makes for containers in every v1
	// hierarchy: rmdir removes a cgroup only when it is empty, so one a
	// running container (another daemon's) still uses stays.
	_ = os.Remove("/run/docker/plugins")
	_ = os.Remove("/run/docker")
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*/docker")
	for _, d := range dirs {
		_ = os.Remove(d)
	}
}

// isDockerd: pid is a live (not zombie) dockerd. A zombie counts as gone:
// when this process did not start it, only init can reap it.
func isDockerd(pid int) bool {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || strings.TrimSpace(string(comm)) != "dockerd" {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X') {
		return false
	}
	return true
}

func pingDocker(socket string, timeout time.Duration) error {
	c := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		}},
	}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://docker/_ping")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("ping %s: HTTP %d", socket, resp.StatusCode)
	}
	return nil
}

func logTail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// Command returns a docker CLI command aimed at this daemon.
func (d *Docker) Command(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, d.CLI, append([]string{"--host", "unix://" + d.Socket}, args...)...)
}

// Run runs the docker CLI, fails the test on error, and returns its
// trimmed standard output.
func (d *Docker) Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := d.run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (d *Docker) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := d.Command(ctx, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// BusyboxImage returns the tag of a local image holding Debian's static
// busybox with every applet linked in /bin, importing it on first use on
// this machine (no registry is reachable). A missing /bin/busybox, or one
// that is not static, is a Skip.
func (d *Docker) BusyboxImage(t testing.TB) string {
	t.Helper()
	if _, err := d.run("image", "inspect", "--format", "{{.Id}}", BusyboxTag); err == nil {
		return BusyboxTag
	}
	if err := checkStatic(busyboxSource); err != nil {
		Skip(t, "needs a static busybox (apt-get install busybox-static): "+err.Error())
	}
	// Two binaries importing at once would both succeed, but one import is
	// enough and keeps dangling images from piling up.
	unlock, err := lockHarness()
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if _, err := d.run("image", "inspect", "--format", "{{.Id}}", BusyboxTag); err == nil {
		return BusyboxTag
	}
	rootfs, err := BusyboxRootfs()
	if err != nil {
		t.Fatalf("busybox rootfs: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := d.Command(ctx, "import", "--change", `CMD ["/bin/sh"]`, "-", BusyboxTag)
	cmd.Stdin = bytes.NewReader(rootfs)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker import %s: %v: %s", BusyboxTag, err, out)
	}
	return BusyboxTag
}

func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked", path)
		}
	}
	return nil
}

// BusyboxRootfs is the busybox image's root filesystem as an uncompressed
// tar, for runtimes other than Docker to import. A missing or dynamically
// linked /bin/busybox is an error (apt-get install busybox-static).
func BusyboxRootfs() ([]byte, error) {
	if err := checkStatic(busyboxSource); err != nil {
		return nil, err
	}
	bin, err := os.ReadFile(busyboxSource)
	if err != nil {
		return nil, err
	}
	list, err := exec.Command(busyboxSource, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", busyboxSource, err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	for _, dir := range []struct {
		name string
		mode int64
	}{{"bin", 0o755}, {"dev", 0o755}, {"etc", 0o755}, {"proc", 0o555}, {"root", 0o700}, {"sys", 0o555}, {"tmp", 0o1777}} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir.name + "/", Mode: dir.mode, ModTime: now}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bin)), ModTime: now}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, err
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" || strings.ContainsRune(applet, '/') {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777, ModTime: now}); err != nil {
			return nil, err
		}
	}
	passwd := []byte("root:x:0:0:root:/root:/bin/sh\n")
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644, Size: int64(len(passwd)), ModTime: now}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(passwd); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// RunContainer starts a detached container (`docker run -d --network none
// ARGS...`, ARGS being options, then image and command) named after the
// test, and returns its full ID. It is removed with `docker rm -f` when the
// test ends.
func (d *Docker) RunContainer(t testing.TB, args ...string) string {
	t.Helper()
	name := fmt.Sprintf("oomguard-%s-%d-%d", strings.ToLower(sanitize(t.Name())), os.Getpid(), time.Now().UnixNano()%1e9)
	full := append([]string{"run", "-d", "--network", "none", "--name", name}, args...)
	out, err := d.run(full...)
	if err != nil {
		// docker run may have created the container before failing to start it.
		_, _ = d.run("rm", "-f", name)
		t.Fatal(err)
	}
	id := lastLine(out)
	t.Cleanup(func() { d.Remove(t, id) })
	return id
}

// Remove force-removes a container; one already gone is not an error.
func (d *Docker) Remove(t testing.TB, id string) {
	t.Helper()
	if _, err := d.run("rm", "-f", id); err != nil && !strings.Contains(strings.ToLower(err.Error()), "no such container") {
		t.Errorf("cleanup: %v", err)
	}
}

// Inspect returns `docker inspect --format FORMAT ID`.
func (d *Docker) Inspect(t testing.TB, id, format string) string {
	t.Helper()
	return d.Run(t, "inspect", "--format", format, id)
}

// CgroupV1 is the container's memory cgroup on this machine's cgroup v1
// hierarchy (dockerd's cgroupfs driver puts it at /docker/<id>).
func (d *Docker) CgroupV1(t testing.TB, id string) string {
	t.Helper()
	pid := d.Inspect(t, id, "{{.State.Pid}}")
	b, err := os.ReadFile(filepath.Join("/proc", pid, "cgroup"))
	if err != nil {
		t.Fatalf("container %s: %v", id, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && containsWord(parts[1], "memory") {
			return filepath.Join(V1MemoryRoot, parts[2])
		}
	}
	t.Fatalf("container %s (pid %s) has no v1 memory cgroup", id, pid)
	return ""
}

func containsWord(list, w string) bool {
	for _, s := range strings.Split(list, ",") {
		if s == w {
			return true
		}
	}
	return false
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// removeExecRoot removes the stopped daemon's exec root. Anything still
// mounted there (a network namespace a crash left) is unmounted first, so
// that removal never reaches into a mounted file system.
func removeExecRoot() {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mounts []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], harnessExec+"/") {
			mounts = append(mounts, f[4])
		}
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		if err := unix.Unmount(mounts[i], unix.MNT_DETACH); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: unmount %s: %v; leaving %s\n", mounts[i], err, harnessExec)
			return
		}
	}
	if err := os.RemoveAll(harnessExec); err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
	}
}
