package vmnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/oom-guard/oom-guard/internal/testenv"
	"github.com/oom-guard/oom-guard/internal/testenv/kube"
	"github.com/oom-guard/oom-guard/internal/testenv/vm"
)

// Paths on the node (the guest).
const (
	// CRISocket is containerd's, where a real node has it.
	CRISocket      = "/run/containerd/containerd.sock"
	logDir         = "/var/log/oomguard"
	kubeletRoot    = "/var/lib/kubelet"
	kubeletConfig  = "/etc/oomguard/kubelet.yaml"
	containerdConf = "/etc/oomguard/containerd.toml"
	resolvConf     = "/etc/oomguard/resolv.conf"
	cniConfDir     = "/etc/cni/net.d"
	timingFile     = "vmnode-timing.txt"
	// PodCgroupRoot is the kubelet's pod cgroup tree (cgroupfs driver on
	// the unified hierarchy).
	PodCgroupRoot = "/sys/fs/cgroup/kubepods"
)

// KubeletConfig is what a test may change in the kubelet's configuration
// (Node.RestartKubelet).
type KubeletConfig struct {
	// SingleProcessOOMKill: the kubelet leaves memory.oom.group unset on
	// new containers (it sets it to 1 by default on cgroup v2).
	SingleProcessOOMKill bool
	// FeatureGates, e.g. {"MemoryQoS": true}.
	FeatureGates map[string]bool
}

// Node is the running node, in the guest.
type Node struct {
	Name string
	// Kubeconfig is the admin's (system:masters), for kubectl.
	Kubeconfig string
	// Timing says what the start-up took, step by step.
	Timing  string
	Startup time.Duration

	rest       *rest.Config
	containerd *process
	kubelet    *process
	config     KubeletConfig
	proxy      net.Listener
}

var shared struct {
	mu  sync.Mutex
	n   *Node
	err error
}

// Require returns the guest's node, starting it on first use: the kubelet
// Ready, the images imported. Outside the VM it skips (the host test
// runs it through Run).
func Require(t testing.TB) *Node {
	t.Helper()
	vm.GuestOnly(t)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.n != nil {
		return shared.n
	}
	if shared.err != nil {
		t.Fatalf("v2 node: %v", shared.err)
	}
	if _, err := os.Stat(filepath.Join(guestNodeDir, "admin.kubeconfig")); err != nil {
		testenv.Skip(t, "the VM was not booted by vmnode.Run: "+err.Error())
	}
	n, err := start(t.Logf)
	if err != nil {
		shared.err = err
		t.Fatalf("v2 node: %v", err)
	}
	shared.n = n
	return n
}

// Cleanup stops the node's kubelet and containerd, if started. Call it
// from TestMain after m.Run (the VM powers off next anyway).
func Cleanup() {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.n == nil {
		return
	}
	shared.n.kubelet.stop()
	shared.n.containerd.stop()
	if shared.n.proxy != nil {
		shared.n.proxy.Close()
	}
	shared.n = nil
}

func start(logf func(string, ...any)) (*Node, error) {
	t0 := time.Now()
	n := &Node{Name: kube.VMNodeName, Kubeconfig: filepath.Join(guestNodeDir, "admin.kubeconfig")}
	token, err := os.ReadFile(filepath.Join(guestNodeDir, "admin.token"))
	if err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(filepath.Join(guestNodeDir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	n.rest = &rest.Config{
		Host:            fmt.Sprintf("https://%s:443", kube.VMHostIP),
		BearerToken:     strings.TrimSpace(string(token)),
		TLSClientConfig: rest.TLSClientConfig{CAData: ca},
		Timeout:         60 * time.Second,
		QPS:             50, Burst: 100,
	}
	var timing []string
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	steps := []struct {
		name string
		do   func(context.Context) error
	}{
		{"root file system", func(context.Context) error { return prepareRoot() }},
		{"service address proxy", func(context.Context) error { return n.serviceProxy() }},
		{"containerd", n.startContainerd},
		{"images", importImages},
		{"kubelet to node Ready", func(ctx context.Context) error { return n.startKubelet(ctx, KubeletConfig{}) }},
	}
	for _, s := range steps {
		st := time.Now()
		if err := s.do(ctx); err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		d := time.Since(st).Round(100 * time.Millisecond)
		timing = append(timing, fmt.Sprintf("%s %v", s.name, d))
		logf("v2 node: %s: %v", s.name, d)
	}
	n.Startup = time.Since(t0)
	n.Timing = fmt.Sprintf("node Ready %v after the test binary's first Require (%s)", n.Startup.Round(100*time.Millisecond), strings.Join(timing, ", "))
	if out := vm.OutDir(); out != "" {
		_ = os.WriteFile(filepath.Join(out, timingFile), []byte(n.Timing+"\n"), 0o644)
	}
	return n, nil
}

// prepareRoot makes the initramfs a root the host's binaries run on: the
// host's /usr is shared in, so the dynamic loader and libraries are
// reached by Debian's merged-/usr links, and /etc gets the few files the
// daemons read.
func prepareRoot() error {
	for link, target := range map[string]string{
		"/lib64":                "/usr/lib64",
		"/lib/x86_64-linux-gnu": "/usr/lib/x86_64-linux-gnu",
		"/sbin":                 "/usr/sbin",
	} {
		if err := os.Symlink(target, link); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/bin:"+guestKubeBin)
	// Fresh tmpfs mounts where the runtime and the kubelet keep state:
	// overlayfs wants a real upper file system, cadvisor a real mount.
	for _, d := range []string{"/run", "/var/lib/containerd", kubeletRoot, "/var/log"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if err := syscall.Mount("tmpfs", d, "tmpfs", 0, "mode=0755"); err != nil {
			return fmt.Errorf("mount tmpfs on %s: %w", d, err)
		}
	}
	for _, d := range []string{"/etc/oomguard", cniConfDir, logDir, "/var/lib/cni", "/tmp"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	files := map[string]string{
		"/etc/machine-id":    "6f6f6d67756172642d766d2d6e6f6465\n",
		"/etc/hosts":         "127.0.0.1 localhost\n",
		"/etc/resolv.conf":   "nameserver 127.0.0.1\n",
		"/etc/nsswitch.conf": "hosts: files dns\n",
		"/etc/passwd":        "root:x:0:0:root:/root:/bin/sh\n",
		"/etc/group":         "root:x:0:\n",
		"/etc/os-release":    "PRETTY_NAME=\"oom-guard test VM (Debian kernel, host's /usr)\"\nID=debian\n",
		// Pods with the default DNS policy get this: a name server on
		// their own loopback, so that a lookup sends nothing anywhere.
		resolvConf:                           "nameserver 127.0.0.1\n",
		containerdConf:                       containerdConfig(),
		cniConfDir + "/10-bridge.conflist":   cniConfig(),
		"/proc/sys/net/ipv4/ip_forward":      "1\n",
		"/proc/sys/kernel/panic_on_oops":     "1\n",
		"/proc/sys/vm/overcommit_memory":     "1\n",
		"/proc/sys/kernel/keys/root_maxkeys": "1000000\n",
	}
	for name, body := range files {
		if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
			return err
		}
	}
	return syscall.Sethostname([]byte(kube.VMNodeName))
}

// serviceProxy makes the Service address (10.96.0.1:443) the API server,
// for pods (host-network ones: the guard) that use the in-cluster
// configuration: a local address whose port is forwarded to VMHostIP.
func (n *Node) serviceProxy() error {
	if out, err := exec.Command("ip", "addr", "add", kube.ServiceIP+"/32", "dev", "lo").CombinedOutput(); err != nil {
		return fmt.Errorf("ip addr add %s: %v: %s", kube.ServiceIP, err, out)
	}
	ln, err := net.Listen("tcp", kube.ServiceIP+":443")
	if err != nil {
		return err
	}
	n.proxy = ln
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.DialTimeout("tcp", kube.VMHostIP+":443", 10*time.Second)
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
				go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return nil
}

func (n *Node) startContainerd(ctx context.Context) error {
	p, err := startProcess("containerd", "containerd", "--config="+containerdConf)
	if err != nil {
		return err
	}
	n.containerd = p
	return p.waitFor(ctx, func(ctx context.Context) error {
		_, err := ctr(ctx, "version")
		return err
	})
}

func importImages(ctx context.Context) error {
	tars, err := filepath.Glob(filepath.Join(guestImages, "*.tar"))
	if err != nil || len(tars) == 0 {
		return fmt.Errorf("no images in %s (%v)", guestImages, err)
	}
	sort.Strings(tars)
	for _, tar := range tars {
		if _, err := ctr(ctx, "images", "import", tar); err != nil {
			return err
		}
	}
	return nil
}

func ctr(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", CRISocket, "--namespace", "k8s.io"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// File is one of the host test's Options.Files, in the guest.
func File(name string) ([]byte, error) {
	return os.ReadFile(filepath.Join(guestNodeDir, "files", filepath.Base(name)))
}

// Ctr runs ctr (namespace k8s.io) against the node's containerd.
func (n *Node) Ctr(ctx context.Context, args ...string) (string, error) { return ctr(ctx, args...) }

// startKubelet writes the configuration and starts the kubelet, then
// waits until the node is Ready with a heartbeat from this kubelet.
func (n *Node) startKubelet(ctx context.Context, cfg KubeletConfig) error {
	if err := os.WriteFile(kubeletConfig, []byte(kubeletConfigYAML(cfg)), 0o644); err != nil {
		return err
	}
	started := time.Now()
	p, err := startProcess("kubelet", filepath.Join(guestKubeBin, "kubelet"),
		"--config="+kubeletConfig, "--kubeconfig="+filepath.Join(guestNodeDir, "kubelet.kubeconfig"),
		"--hostname-override="+kube.VMNodeName, "--node-ip="+kube.VMNodeIP, "--root-dir="+kubeletRoot,
		"--cert-dir="+filepath.Join(kubeletRoot, "pki"), "--v=1")
	if err != nil {
		return err
	}
	n.kubelet, n.config = p, cfg
	client, err := n.Client()
	if err != nil {
		return err
	}
	return p.waitFor(ctx, func(ctx context.Context) error {
		node, err := client.CoreV1().Nodes().Get(ctx, kube.VMNodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue && c.LastHeartbeatTime.Time.After(started.Add(-time.Second)) {
				return nil
			}
		}
		return fmt.Errorf("node %s not Ready: %+v", kube.VMNodeName, node.Status.Conditions)
	})
}

// RestartKubelet stops the kubelet and starts it again with cfg, and
// waits for the node to be Ready again. Running containers stay; what
// cfg changes applies to containers made from then on.
func (n *Node) RestartKubelet(t testing.TB, cfg KubeletConfig) time.Duration {
	t.Helper()
	start := time.Now()
	n.kubelet.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := n.startKubelet(ctx, cfg); err != nil {
		t.Fatalf("restart kubelet: %v", err)
	}
	return time.Since(start)
}

// Config is the kubelet's current configuration (as RestartKubelet set it).
func (n *Node) Config() KubeletConfig { return n.config }

// RESTConfig is the admin's client configuration.
func (n *Node) RESTConfig() *rest.Config { return rest.CopyConfig(n.rest) }

// ConfigFor is RESTConfig with another bearer token (a ServiceAccount's).
func (n *Node) ConfigFor(token string) *rest.Config {
	cfg := n.RESTConfig()
	cfg.BearerToken = token
	return cfg
}

// Client is the admin's clientset.
func (n *Node) Client() (*kubernetes.Clientset, error) { return kubernetes.NewForConfig(n.rest) }

// Kubectl runs kubectl as the admin, with stdin (may be nil), and returns
// its combined output.
func (n *Node) Kubectl(ctx context.Context, stdin []byte, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(guestKubeBin, "kubectl"), append([]string{"--kubeconfig=" + n.Kubeconfig}, args...)...)
	if stdin != nil {
		cmd.Stdin = strings.NewReader(string(stdin))
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// DaemonLog is the tail of the kubelet's or containerd's log.
func (n *Node) DaemonLog(name string) string {
	return logTail(filepath.Join(logDir, name+".log"), 4000)
}

// process is a daemon of the node.
type process struct {
	name   string
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
	err    error
}

func startProcess(name, bin string, args ...string) (*process, error) {
	logPath := filepath.Join(logDir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fmt.Fprintf(f, "=== %s: start %s %s\n", time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, exited: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	return p, nil
}

func (p *process) stop() {
	if p == nil {
		return
	}
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

func (p *process) waitFor(ctx context.Context, ready func(context.Context) error) error {
	var last error
	for {
		attempt, cancel := context.WithTimeout(ctx, 10*time.Second)
		last = ready(attempt)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited (%v); its log:\n%s", p.name, p.err, logTail(p.log, 4000))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %v; its log:\n%s", p.name, last, logTail(p.log, 4000))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func logTail(path string, max int) string {
	b, _ := os.ReadFile(path)
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}
