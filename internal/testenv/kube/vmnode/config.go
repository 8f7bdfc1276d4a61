package vmnode

import (
	"fmt"
	"sort"
	"strings"
)

// containerdConfig: containerd 1.6's CRI plugin at the default places of
// a node. runc's NoPivotRoot: the guest's root is the initramfs (rootfs),
// which pivot_root(2) cannot leave, so runc moves the container's root
// over / and chroots instead (what runc does for DOCKER_RAMDISK).
func containerdConfig() string {
	return fmt.Sprintf(`version = 2
oom_score = 0

[grpc]
  address = %q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  stream_server_address = "127.0.0.1"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        NoPivotRoot = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
    max_conf_num = 1
`, CRISocket, "docker.io/library/oomguard-pause:1", cniConfDir)
}

// cniConfig: one bridge in the guest, no masquerading (nothing is to leave
// the node).
func cniConfig() string {
	return `{
  "cniVersion": "0.4.0",
  "name": "oomguard-vm",
  "plugins": [{
    "type": "bridge",
    "bridge": "ogv0",
    "isGateway": true,
    "ipMasq": false,
    "ipam": {
      "type": "host-local",
      "ranges": [[{"subnet": "10.215.0.0/24"}]],
      "routes": [{"dst": "0.0.0.0/0"}],
      "dataDir": "/var/lib/cni/networks"
    }
  }]
}
`
}

// kubeletConfigYAML is the v1 harness's configuration on cgroup v2, with
// what emulation needs: slower status updates (every call costs), and the
// two settings tests change.
func kubeletConfigYAML(cfg KubeletConfig) string {
	var gates []string
	for k, v := range cfg.FeatureGates {
		gates = append(gates, fmt.Sprintf("%s: %v", k, v))
	}
	sort.Strings(gates)
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://%s
cgroupDriver: cgroupfs
failSwapOn: false
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
resolvConf: %s
clusterDomain: cluster.local
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%%", nodefs.inodesFree: "1%%", imagefs.available: "1%%"}
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
runtimeRequestTimeout: 5m
singleProcessOOMKill: %v
featureGates: {%s}
`, CRISocket, resolvConf, cfg.SingleProcessOOMKill, strings.Join(gates, ", "))
}
