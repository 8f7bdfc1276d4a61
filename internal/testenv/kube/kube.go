// Package kube runs a real single-node Kubernetes cluster on this machine
// for tests and benchmarks: etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, containerd (with runc and the CNI bridge plugin) and a
// kubelet, all inside a network namespace of its own.
//
// Where the parts come from: the Kubernetes binaries are built from the Go
// module proxy by scripts/kube-deps (pinned to Version, cached under
// /var/cache/oom-guard/kube); etcd, containerd, runc and the CNI plugins
// are Debian's packages. No registry is reachable, so every image is
// written locally (ImageArchive) and imported into containerd.
//
// Isolation. Everything runs in the network namespace NetNS (entered with
// `nsenter --net`, which keeps the host's /sys and so its cgroups visible,
// where `ip netns exec` would hide them): the node's address is on a veth
// pair inside it and no route leads out, so no packet leaves it. The API
// server also holds the first service address (10.96.0.1:443) as a local
// address, so that pods reach it in-cluster without a kube-proxy. The
// containerd is the harness's own (socket, root, state and runc root under
// Dir), never the one Docker's test harness may run. The test process
// itself talks to the API server through a dialer that opens its sockets
// inside the namespace (Cluster.RESTConfig).
//
// Start-up takes seconds (etcd and containerd in parallel, then the API
// server, then the rest; images are written, not pulled), so each test
// binary may have its own cluster. With Options.ControlPlaneOnly
// (RequireControlPlane) there is no node here at all: package vmnode
// joins one from a cgroup v2 VM. A benchmark or tool uses Start and Stop
// directly.
//
// What it changes on the host, and undoes: the kubelet makes the kubepods
// cgroup tree in every hierarchy (pods are under
// /sys/fs/cgroup/memory/kubepods), bind-mounts its root directory and pod
// volumes, and sets six kernel tunables (vm.overcommit_memory,
// vm.panic_on_oom, kernel.panic, kernel.panic_on_oops,
// kernel.keys.root_max{keys,bytes}). Stop kills every process in the
// namespace and in the kubepods tree, unmounts everything under Dir,
// removes the kubepods tree, restores the tunables, deletes the namespace
// and removes Dir; Start first does the same for whatever a crashed run
// left. Dir's existence is what marks the kubepods tree as the harness's: a
// kubepods tree with no Dir belongs to another kubelet, and the harness
// refuses to start.
//
// One cluster at a time per machine (a lock file in the cache directory);
// within a test binary, Require starts it once and every test shares it. A
// package that calls Require must stop it from TestMain:
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		kube.Cleanup()
//		os.Exit(code)
//	}
package kube

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/oom-guard/oom-guard/internal/testenv"
)

// Version is the Kubernetes release the harness runs (scripts/kube-deps
// builds the same; client-go in go.mod is its v0.34.x).
const Version = "v1.34.4"

// Fixed names and addresses. They are only ever seen inside NetNS.
const (
	NetNS       = "oomguard-kube"
	NodeName    = "oomguard-node"
	NodeIP      = "10.213.0.2"
	nodeCIDR    = NodeIP + "/24"
	ServiceIP   = "10.96.0.1" // the `kubernetes` Service's address: the first of serviceCIDR
	serviceCIDR = "10.96.0.0/24"
	podCIDR     = "10.214.0.0/24"
	apiPort     = 443 // the Service's port too, so that ServiceIP:443 is the API server itself
	cniNetwork  = "oomguard-kube"
	cniBridge   = "ogk0"
	// VMNodeName is the node a VM runs (package vmnode), VMHostIP the
	// address it reaches NetNS's loopback at (QEMU's user-mode network
	// maps its gateway there) and VMNodeIP its own, which NetNS holds
	// too, forwarded into the VM, so that the API server reaches the
	// kubelet at the node's InternalIP.
	VMNodeName = "oomguard-vm-node"
	VMHostIP   = "10.0.2.2"
	VMNodeIP   = "10.0.2.15"
	// PodCgroupRoot is the kubelet's pod cgroup tree on the v1 memory
	// hierarchy (cgroupfs driver, cgroup root /).
	PodCgroupRoot = "/sys/fs/cgroup/memory/kubepods"
)

// Defaults of the locations, overridable by the environment (the same
// variables as scripts/kube-deps).
const (
	defaultCache = "/var/cache/oom-guard/kube"
	defaultDir   = "/var/lib/oomguard-kube"
	startTimeout = 4 * time.Minute
)

// Cluster is a running single-node cluster.
type Cluster struct {
	Dir         string // all of its state; removed by Stop
	Bin         string // the Kubernetes binaries
	Kubeconfig  string // the admin's (system:masters), for kubectl
	CRISocket   string // the harness's containerd, in a directory of its own (CRISocketDir)
	APIServer   string // https://NodeIP:443, reachable only inside NetNS
	StartupTime time.Duration

	pki      *pki
	noNode   bool
	daemons  []*daemon
	lock     *os.File // the machine-wide lock, held while the cluster lives
	stopOnce sync.Once
}

// Options tune Start.
type Options struct {
	// Log receives progress lines (nil: none).
	Log func(format string, args ...any)
	// ControlPlaneOnly starts etcd, the API server, the controller
	// manager and the scheduler, and no node: no containerd, no kubelet
	// on this machine (a node joins from elsewhere: package vmnode).
	ControlPlaneOnly bool
}

// Start brings a cluster up: the node Ready, the default ServiceAccount
// there, the pause image imported. On error everything is torn down.
func Start(opts Options) (*Cluster, error) {
	logf := opts.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	for _, tool := range []string{"etcd", "containerd", "containerd-shim-runc-v2", "runc", "ctr", "nsenter", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%w: %s not found (scripts/kube-deps installs it)", ErrMissing, tool)
		}
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		return nil, fmt.Errorf("%w: no CNI bridge plugin in /usr/lib/cni (apt-get install containernetworking-plugins)", ErrMissing)
	}
	lock, err := lockMachine()
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: stateDir(), Bin: bin, lock: lock, noNode: opts.ControlPlaneOnly}
	c.CRISocket = filepath.Join(c.Dir, "run", "containerd.sock")
	c.APIServer = fmt.Sprintf("https://%s:%d", NodeIP, apiPort)
	c.Kubeconfig = filepath.Join(c.Dir, "admin.kubeconfig")
	start := time.Now()
	if err := c.start(logf); err != nil {
		c.Stop()
		return nil, err
	}
	c.StartupTime = time.Since(start)
	logf("kube: cluster up in %v", c.StartupTime.Round(100*time.Millisecond))
	return c, nil
}

// ErrMissing marks a missing prerequisite (a Skip in tests).
var ErrMissing = errors.New("prerequisite missing")

func (c *Cluster) start(logf func(string, ...any)) error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := removeLeftovers(c.Dir); err != nil {
		return fmt.Errorf("leftovers of an earlier run: %w", err)
	}
	if _, err := os.Stat(PodCgroupRoot); err == nil {
		return fmt.Errorf("%s exists and %s does not: another kubelet runs on this machine; the harness will not touch its pods", PodCgroupRoot, c.Dir)
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return err
	}
	if err := recordHostDirs(c.Dir); err != nil {
		return err
	}
	steps := []struct {
		name string
		do   func(context.Context, func(string, ...any)) error
	}{
		{"network namespace", func(context.Context, func(string, ...any)) error { return createNetNS() }},
		{"certificates and configuration", func(context.Context, func(string, ...any)) error { return c.writeConfig() }},
		{"etcd and containerd", c.startStorageAndRuntime},
		{"kube-apiserver", c.startAPIServer},
		{"controllers, scheduler, kubelet", c.startNodeParts},
		{"node ready", c.waitNodeReady},
	}
	if c.noNode {
		steps[2].name, steps[4].name, steps[5].name = "etcd", "controllers, scheduler", "service accounts"
	}
	for _, s := range steps {
		t0 := time.Now()
		if err := s.do(ctx, logf); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		logf("kube: %s: %v", s.name, time.Since(t0).Round(10*time.Millisecond))
	}
	return nil
}

// Stop stops every daemon and removes everything the cluster made (see the
// package comment). Safe to call more than once.
func (c *Cluster) Stop() error {
	var err error
	c.stopOnce.Do(func() {
		// Reverse order: the kubelet first, so it restarts nothing; the
		// containers through containerd while it still runs.
		for i := len(c.daemons) - 1; i >= 0; i-- {
			if c.daemons[i].name == "containerd" {
				c.removeContainers()
			}
			c.daemons[i].stop()
		}
		err = removeLeftovers(c.Dir)
		if c.lock != nil {
			c.lock.Close()
		}
	})
	return err
}

// CRISocketDir is the directory holding CRISocket and nothing else of the
// harness's: what a pod that talks to the runtime mounts (where a real
// node has /run/containerd).
func (c *Cluster) CRISocketDir() string { return filepath.Dir(c.CRISocket) }

// RESTConfig is the admin's client configuration, with a dialer that
// connects from inside NetNS.
func (c *Cluster) RESTConfig() *rest.Config {
	return &rest.Config{
		Host:            c.APIServer,
		BearerToken:     c.pki.adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.pki.caPEM},
		Dial:            DialInNetNS,
		Timeout:         30 * time.Second,
		QPS:             50,
		Burst:           100,
	}
}

// ConfigFor is RESTConfig with another bearer token (a ServiceAccount's).
func (c *Cluster) ConfigFor(token string) *rest.Config {
	cfg := c.RESTConfig()
	cfg.BearerToken = token
	return cfg
}

// Client is the admin's clientset.
func (c *Cluster) Client() (*kubernetes.Clientset, error) {
	return kubernetes.NewForConfig(c.RESTConfig())
}

// Kubectl runs the cluster's own kubectl as the admin, inside NetNS, with
// stdin (may be nil), and returns its combined output.
func (c *Cluster) Kubectl(ctx context.Context, stdin []byte, args ...string) (string, error) {
	full := append([]string{"--net=" + netNSPath, "--", filepath.Join(c.Bin, "kubectl"), "--kubeconfig=" + c.Kubeconfig}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", full...)
	if stdin != nil {
		cmd.Stdin = strings.NewReader(string(stdin))
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// The cluster a test binary shares (Require, Cleanup).
var shared struct {
	mu  sync.Mutex
	c   *Cluster
	err error
}

// Require returns the test binary's cluster, starting it on first use. A
// missing binary or package is a testenv.Skip (a failure under CI=true);
// a cluster that fails to start fails the test, and every later one.
func Require(t testing.TB) *Cluster {
	t.Helper()
	testenv.RequireV1(t)
	return require(t, false)
}

// RequireControlPlane is Require for a cluster without this machine's
// node (Options.ControlPlaneOnly), for a node that joins from a VM. The
// test binary has one cluster at a time: a cluster of the other kind is
// stopped first (tests of a package run one after the other).
func RequireControlPlane(t testing.TB) *Cluster {
	t.Helper()
	testenv.RequireRoot(t)
	return require(t, true)
}

func require(t testing.TB, controlPlaneOnly bool) *Cluster {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.c != nil && shared.c.noNode != controlPlaneOnly {
		if err := shared.c.Stop(); err != nil {
			t.Fatalf("kube cluster: stopping the one of the other kind: %v", err)
		}
		shared.c, shared.err = nil, nil
	}
	if shared.c != nil {
		return shared.c
	}
	if shared.err != nil {
		t.Fatalf("kube cluster: %v", shared.err)
	}
	c, err := Start(Options{Log: t.Logf, ControlPlaneOnly: controlPlaneOnly})
	if errors.Is(err, ErrMissing) {
		testenv.Skip(t, err.Error())
	}
	if err != nil {
		shared.err = err
		t.Fatalf("kube cluster: %v", err)
	}
	shared.c = c
	return c
}

// Cleanup stops the shared cluster, if one was started. Call it from
// TestMain after m.Run.
func Cleanup() {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.c == nil {
		return
	}
	if err := shared.c.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "kube: cleanup:", err)
	}
	shared.c = nil
}

func cacheDir() string {
	if d := os.Getenv("OOMGUARD_KUBE_CACHE"); d != "" {
		return d
	}
	return defaultCache
}

func binDir() (string, error) {
	dir := filepath.Join(cacheDir(), Version, "bin")
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Errorf("%w: no %s in %s (run scripts/kube-deps)", ErrMissing, b, dir)
		}
	}
	return dir, nil
}

func stateDir() string {
	if d := os.Getenv("OOMGUARD_KUBE_DIR"); d != "" {
		return d
	}
	return defaultDir
}

// lockMachine takes the machine-wide lock: one cluster at a time.
func lockMachine() (*os.File, error) {
	lockPath := filepath.Join(cacheDir(), ".cluster.lock")
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", lockPath, err)
	}
	deadline := time.Now().Add(startTimeout)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock %s: another cluster ran for longer than %v", lockPath, startTimeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// NetNSPath is the cluster's network namespace, for a process to enter
// (nsenter --net=NetNSPath).
const NetNSPath = netNSPath

// CACert is the cluster CA's certificate (PEM), which the API server's
// serving certificate is signed by.
func (c *Cluster) CACert() []byte { return c.pki.caPEM }

// AdminToken is the admin's bearer token (system:masters).
func (c *Cluster) AdminToken() string { return c.pki.adminToken }

// VMNodeToken is the bearer token of the kubelet of VMNodeName
// (system:node:VMNodeName, group system:nodes).
func (c *Cluster) VMNodeToken() string { return c.pki.vmNodeToken }
