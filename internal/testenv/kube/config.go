package kube

import (
	"fmt"
	"os"
	"path/filepath"
)

// The images every cluster has: the pod sandbox (pause) and busybox.
const (
	PauseImage   = "docker.io/library/oomguard-pause:1"
	BusyboxImage = "docker.io/library/oomguard-busybox:1"
)

func (c *Cluster) path(parts ...string) string {
	return filepath.Join(append([]string{c.Dir}, parts...)...)
}

// writeConfig writes the credentials and every daemon's configuration.
func (c *Cluster) writeConfig() error {
	p, err := newPKI()
	if err != nil {
		return err
	}
	c.pki = p
	if err := p.write(c.path("pki")); err != nil {
		return err
	}
	for _, d := range []string{"run", "logs", "etcd", "kubelet", "pod-logs", "cni/net.d", "cni/ipam", "containerd/root", "containerd/state", "containerd/opt", "containerd/runc"} {
		if err := os.MkdirAll(c.path(d), 0o700); err != nil {
			return err
		}
	}
	files := map[string]string{
		"admin.kubeconfig":             c.kubeconfig("admin", p.adminToken),
		"kubelet.kubeconfig":           c.kubeconfig("kubelet", p.nodeToken),
		"containerd.toml":              c.containerdConfig(),
		"cni/net.d/10-bridge.conflist": c.cniConfig(),
		"kubelet.yaml":                 c.kubeletConfig(),
		// Pods with the default DNS policy get this resolv.conf: a name
		// server on their own loopback, so a lookup sends nothing anywhere.
		"resolv.conf": "nameserver 127.0.0.1\n",
	}
	for name, body := range files {
		if err := os.WriteFile(c.path(name), []byte(body), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) kubeconfig(user, token string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: oomguard-kube
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: oomguard-kube
  context: {cluster: oomguard-kube, user: %s}
current-context: oomguard-kube
`, c.APIServer, c.path("pki", "ca.crt"), user, token, user)
}

// containerdConfig: containerd 1.6's CRI plugin with everything of its own
// under Dir. restrict_oom_score_adj: this machine refuses negative
// oom_score_adj values, which the sandbox (-998) and Guaranteed pods ask
// for. The runc root is set too: by default it is shared with every other
// containerd on the machine (/run/containerd/runc).
func (c *Cluster) containerdConfig() string {
	return fmt.Sprintf(`version = 2
root = %q
state = %q
oom_score = 0

[grpc]
  address = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
    max_conf_num = 1
`, c.path("containerd", "root"), c.path("containerd", "state"), c.CRISocket, c.path("containerd", "opt"),
		PauseImage, c.path("containerd", "runc"), c.path("cni", "net.d"))
}

// cniConfig: one bridge in the node's namespace, no masquerading (nothing
// is to leave the namespace), leases kept under Dir.
func (c *Cluster) cniConfig() string {
	return fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": %q,
  "plugins": [{
    "type": "bridge",
    "bridge": %q,
    "isGateway": true,
    "ipMasq": false,
    "ipam": {
      "type": "host-local",
      "ranges": [[{"subnet": %q}]],
      "routes": [{"dst": "0.0.0.0/0"}],
      "dataDir": %q
    }
  }]
}
`, cniNetwork, cniBridge, podCIDR, c.path("cni", "ipam"))
}

// kubeletConfig is what worked on this machine (shared/notes): cgroupfs on
// cgroup v1, no swap check, the API server trusted without webhooks, and
// eviction thresholds low enough that a busy test machine evicts nothing.
func (c *Cluster) kubeletConfig() string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://%s
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
podLogsDir: %s
resolvConf: %s
clusterDomain: cluster.local
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%%", nodefs.inodesFree: "1%%", imagefs.available: "1%%"}
nodeStatusUpdateFrequency: 2s
syncFrequency: 10s
`, c.CRISocket, c.path("pod-logs"), c.path("resolv.conf"))
}
