// Package vmnode runs a real cgroup v2 Kubernetes node for tests: the
// kubelet, containerd and runc inside the VM of internal/testenv/vm (Debian's
// 6.1 kernel, cgroup2 with the memory controller), joined to the control
// plane that internal/testenv/kube runs on this machine (etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler, in the network
// namespace kube.NetNS, with no node of its own).
//
// A host test names the tests to run on the node, as vm.Run does:
//
//	func TestOnV2Node(t *testing.T) {
//		vmnode.Run(t, ".", vmnode.Options{Run: "^TestV2Node"})
//	}
//
// and those tests, in the VM, get the node (started once per VM):
//
//	func TestV2NodeSomething(t *testing.T) {
//		n := vmnode.Require(t) // skips on the host
//		client, _ := n.Client()
//		...
//	}
//
// Binaries: the guest gets the host's own, through three read-only 9p
// shares: the Kubernetes binaries' cache directory (kubelet, kubectl) at
// /opt/kube/bin, the host's /usr (containerd, containerd-shim-runc-v2,
// runc, ctr, the CNI plugins in /usr/lib/cni, mount, ip, and the shared
// libraries they link) at /usr, and a directory the host test writes
// (credentials, the images as docker-archives) at /opt/node. 9p rather
// than virtio-fs: QEMU serves 9p itself, where virtio-fs needs a
// virtiofsd daemon per share and shared memory for the guest's RAM; and
// rather than copying into the initramfs: the kubelet alone is ~100 MB,
// which the kernel would unpack into RAM at every boot before /init runs.
//
// Network: QEMU's user-mode network, with QEMU inside kube.NetNS. The
// guest is 10.0.2.15 (kube.VMNodeIP) with a route to 10.0.2.0/24 only; the
// gateway 10.0.2.2 (kube.VMHostIP) is NetNS's loopback, where the API
// server listens. The other way, NetNS holds 10.0.2.15 on its loopback,
// with QEMU listening on its port 10250 and forwarding to the kubelet's,
// so `kubectl logs` and `exec` work. Nothing is sent anywhere else: slirp
// makes its sockets in NetNS, which has no route out. In the guest, the
// Service address 10.96.0.1:443, which pods get as KUBERNETES_SERVICE_HOST,
// is a local address whose port a proxy in the test process forwards to
// the API server (no kube-proxy); the pod network is a CNI bridge inside
// the guest.
//
// The host test's cluster is the test binary's shared one
// (kube.RequireControlPlane); when the VM is done, the Node object and
// whatever pods were bound to it are deleted from it.
package vmnode

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/oom-guard/oom-guard/internal/testenv/kube"
	"github.com/oom-guard/oom-guard/internal/testenv/vm"
)

// Where the shares are in the guest.
const (
	guestKubeBin = "/opt/kube/bin"
	guestNodeDir = "/opt/node"
	guestImages  = guestNodeDir + "/images"
)

// Options say which tests run on the node and what the VM gets.
type Options struct {
	// Run is the -test.run pattern of the tests to run in the VM.
	Run string
	// Images are imported into the node's containerd besides the pause
	// and busybox images (kube.PauseImage, kube.BusyboxImage).
	Images []kube.Image
	// Files are put in a directory the guest reads them from (File).
	Files map[string][]byte
	// Env is added to the test binary's environment in the VM.
	Env []string
	// Timeout bounds the whole VM run (default 20 minutes).
	Timeout time.Duration
	// MemoryMiB is the VM's RAM (default 3072).
	MemoryMiB int
}

// Run boots the VM node and runs pkg's tests matching opts.Run in it,
// reported as subtests of t (see vm.Run). It skips t (fails it under
// CI=true) without root, QEMU, the VM kernel or the Kubernetes binaries.
func Run(t *testing.T, pkg string, opts Options) *vm.Result {
	t.Helper()
	if vm.InGuest() {
		t.Skip("already in the VM")
	}
	c := kube.RequireControlPlane(t)
	if opts.Timeout <= 0 {
		opts.Timeout = 20 * time.Minute
	}
	if opts.MemoryMiB <= 0 {
		opts.MemoryMiB = 3072
	}
	dir, err := os.MkdirTemp("", "oomguard-vmnode-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := writeNodeDir(ctx, c, dir, opts.Images); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "files"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range opts.Files {
		if err := os.WriteFile(filepath.Join(dir, "files", filepath.Base(name)), body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The node's address in NetNS, which QEMU forwards into the guest: the
	// API server reaches the kubelet at the node's InternalIP. Its local
	// route says to send from 127.0.0.1: slirp shows the guest a
	// forwarded connection from its gateway only when it comes from a
	// loopback address, and otherwise from the address it came from,
	// which would be the guest's own.
	for _, args := range [][]string{
		{"addr", "replace", kube.VMNodeIP + "/32", "dev", "lo"},
		{"route", "replace", "local", kube.VMNodeIP, "dev", "lo", "table", "local", "scope", "host", "src", "127.0.0.1"},
	} {
		if out, err := exec.Command("ip", append([]string{"-n", kube.NetNS}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	client, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	forgetNode(ctx, t, client)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		forgetNode(ctx, t, client)
	})
	res := vm.Run(t, pkg, vm.Options{
		Run:     opts.Run,
		Env:     opts.Env,
		Timeout: opts.Timeout, MemoryMiB: opts.MemoryMiB, CPUs: 2,
		Shares: []vm.Share{
			{HostPath: c.Bin, GuestPath: guestKubeBin},
			{HostPath: "/usr", GuestPath: "/usr"},
			{HostPath: dir, GuestPath: guestNodeDir},
		},
		Net: &vm.Net{
			NetNS:   kube.NetNSPath,
			HostFwd: []string{fmt.Sprintf("tcp:%s:%d-:%d", kube.VMNodeIP, kubeletPort, kubeletPort)},
		},
		Modules:     []string{"veth", "bridge", "overlay"},
		Controllers: []string{"cpuset", "cpu", "io", "memory", "hugetlb", "pids"},
	})
	if res != nil {
		if b, ok := res.Files[timingFile]; ok {
			t.Logf("v2 node: %s", strings.TrimSpace(string(b)))
		}
	}
	return res
}

const kubeletPort = 10250

// writeNodeDir fills the directory the guest sees at /opt/node.
func writeNodeDir(ctx context.Context, c *kube.Cluster, dir string, extra []kube.Image) error {
	imgDir := filepath.Join(dir, "images")
	if err := os.MkdirAll(imgDir, 0o755); err != nil {
		return err
	}
	build, err := os.MkdirTemp("", "oomguard-vmnode-build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(build)
	imgs, err := kube.BaseImages(ctx, build)
	if err != nil {
		return err
	}
	for i, img := range append(imgs, extra...) {
		var buf bytes.Buffer
		if err := kube.WriteArchive(&buf, img); err != nil {
			return fmt.Errorf("image %s: %w", img.Name, err)
		}
		if err := os.WriteFile(filepath.Join(imgDir, fmt.Sprintf("%02d.tar", i)), buf.Bytes(), 0o644); err != nil {
			return err
		}
	}
	server := fmt.Sprintf("https://%s:443", kube.VMHostIP)
	files := map[string]string{
		"kubelet.kubeconfig": kubeconfig(server, c.CACert(), "kubelet", c.VMNodeToken()),
		"admin.kubeconfig":   kubeconfig(server, c.CACert(), "admin", c.AdminToken()),
		"ca.crt":             string(c.CACert()),
		"admin.token":        c.AdminToken(),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func kubeconfig(server string, ca []byte, user, token string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: oomguard-kube
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: oomguard-kube
  context: {cluster: oomguard-kube, user: %s}
current-context: oomguard-kube
`, server, base64.StdEncoding.EncodeToString(ca), user, token, user)
}

// forgetNode deletes the VM node's Node object and every pod bound to it
// (at once: no kubelet is left to confirm), so that the shared cluster
// holds nothing of a VM that is gone.
func forgetNode(ctx context.Context, t *testing.T, client kubernetes.Interface) {
	t.Helper()
	pods, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", kube.VMNodeName).String()})
	if err == nil {
		for _, p := range pods.Items {
			zero := int64(0)
			_ = client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
		}
	}
	if err := client.CoreV1().Nodes().Delete(ctx, kube.VMNodeName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Logf("delete node %s: %v", kube.VMNodeName, err)
	}
}
