package identity

import (
	"strings"
	"testing"
)

// Real paths, and where each came from:
//
//	[nv]  neuvector/neuvector share/system/cgroup_test.go: /proc/PID/cgroup
//	      captured on Debian, CentOS, Ubuntu, RancherOS, kubeadm (cgroupfs and
//	      systemd), Bottlerocket and OpenShift 4.6 (CRI-O 1.19) nodes.
//	[dd]  open-telemetry/opentelemetry-java-instrumentation
//	      dd-trace-ot/src/test/groovy/datadog/opentracing/ContainerInfoTest.groovy
//	      (Datadog's container tagging RFC examples).
//	[gc]  GuanceCloud/datakit process input test TestParseScopePathForCgroup:
//	      a kind node (systemd driver under kubelet.slice, static pod hash)
//	      and a docker-in-docker scope.
//	[env] this project's machine: Debian docker.io 20.10, cgroupfs driver,
//	      cgroup v1 (shared/notes/environment.md "Real Docker").
//	[crio] cri-o/cri-o internal/config/cgmgr/cgroupfs.go and systemd.go: the
//	      conmon cgroup is <parent>/crio-conmon-<id> (cgroupfs) or
//	      crio-conmon-<id>.scope (systemd); the container's own cgroup is
//	      crio-<id> or crio-<id>.scope, on cgroup v2 with a /container child.
//	      No captured sample was found for these; the IDs are [nv]'s.
var pathCases = []struct {
	src, path string
	want      ID
	ok        bool
}{
	// Plain Docker.
	{"nv", "/docker/31cb02944da7a12196a193cf0e0f6c226d7c453a1db62e65ba98287593a2ee30",
		ID{Runtime: "docker", ContainerID: "31cb02944da7a12196a193cf0e0f6c226d7c453a1db62e65ba98287593a2ee30"}, true},
	{"dd", "/docker/3726184226f5d3147c25fdeab5b60097e378e8a720503a5e19ecfdf29f869860",
		ID{Runtime: "docker", ContainerID: "3726184226f5d3147c25fdeab5b60097e378e8a720503a5e19ecfdf29f869860"}, true},
	{"nv", "/system.slice/docker-9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d.scope",
		ID{Runtime: "docker", ContainerID: "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d"}, true},
	{"gc", "/system.slice/docker-b362fa680d463b43611d956fcaab31640a49de2d11bf2604c2af55570865e46b.scope",
		ID{Runtime: "docker", ContainerID: "b362fa680d463b43611d956fcaab31640a49de2d11bf2604c2af55570865e46b"}, true},
	// RancherOS: a user container in system-docker's container.
	{"nv", "/docker/a9a5ad238e59234193ee7ec3fcff5e735b3708ea1068826952255b69e3cfa413/docker/ec08435e04266c5ba381fccbb829f626d11d8ddf5f8f547263c7a2d79ab4787a",
		ID{Runtime: "docker", ContainerID: "ec08435e04266c5ba381fccbb829f626d11d8ddf5f8f547263c7a2d79ab4787a"}, true},
	// A kind node container: its systemd's services are in that container.
	{"gc", "/system.slice/docker-89ac90181a86fdea23d87ab993ceb698aa61528123c23135ef43fe5246a1b11e.scope/system.slice/containerd.service",
		ID{Runtime: "docker", ContainerID: "89ac90181a86fdea23d87ab993ceb698aa61528123c23135ef43fe5246a1b11e"}, true},
	// Absolute, under this machine's v1 mount.
	{"env", "/sys/fs/cgroup/memory/docker/31cb02944da7a12196a193cf0e0f6c226d7c453a1db62e65ba98287593a2ee30",
		ID{Runtime: "docker", ContainerID: "31cb02944da7a12196a193cf0e0f6c226d7c453a1db62e65ba98287593a2ee30"}, true},
	{"env", "/sys/fs/cgroup/memory/docker/31cb02944da7a12196a193cf0e0f6c226d7c453a1db62e65ba98287593a2ee30/",
		ID{Runtime: "docker", ContainerID: "31cb02944da7a12196a193cf0e0f6c226d7c453a1db62e65ba98287593a2ee30"}, true},

	// cgroupfs driver.
	{"nv", "/kubepods/besteffort/pod74ba62da-1a3d-11e7-bb11-080027cb0e22/cb1eadb7abe3a6545e9856411207073277838e1bdc003337c2f8685faeedc32c",
		ID{ContainerID: "cb1eadb7abe3a6545e9856411207073277838e1bdc003337c2f8685faeedc32c", PodUID: "74ba62da-1a3d-11e7-bb11-080027cb0e22", QoS: "besteffort"}, true},
	{"dd", "/kubepods/besteffort/pod3d274242-8ee0-11e9-a8a6-1e68d864ef1a/3e74d3fd9db4c9dd921ae05c2502fb984d0cde1b36e581b13f79c639da4518a1",
		ID{ContainerID: "3e74d3fd9db4c9dd921ae05c2502fb984d0cde1b36e581b13f79c639da4518a1", PodUID: "3d274242-8ee0-11e9-a8a6-1e68d864ef1a", QoS: "besteffort"}, true},
	// kube-proxy made a sub-cgroup inside its own container.
	{"nv", "/kubepods/besteffort/podf8a694f2-7c08-11e9-98da-000c29077430/c04e0a88a1de067f25bece337d4dbb897396e0b623c2a65330850fc9823f1903/kube-proxy",
		ID{ContainerID: "c04e0a88a1de067f25bece337d4dbb897396e0b623c2a65330850fc9823f1903", PodUID: "f8a694f2-7c08-11e9-98da-000c29077430", QoS: "besteffort"}, true},
	{"nv", "/kubepods/burstable/pod1fe19bf5-e8ef-11e8-900c-52daee5a874d/da31e536c8d61304a6d5998d163d12400a7a9a1003e1d86369e8fadb022fc17d",
		ID{ContainerID: "da31e536c8d61304a6d5998d163d12400a7a9a1003e1d86369e8fadb022fc17d", PodUID: "1fe19bf5-e8ef-11e8-900c-52daee5a874d", QoS: "burstable"}, true},
	// Guaranteed: no QoS level.
	{"nv", "/kubepods/pod1fe19bf5-e8ef-11e8-900c-52daee5a874d/da31e536c8d61304a6d5998d163d12400a7a9a1003e1d86369e8fadb022fc17d",
		ID{ContainerID: "da31e536c8d61304a6d5998d163d12400a7a9a1003e1d86369e8fadb022fc17d", PodUID: "1fe19bf5-e8ef-11e8-900c-52daee5a874d", QoS: "guaranteed"}, true},
	// A static pod's config hash on cgroupfs.
	{"gc", "/kubepods/burstable/podb1e89a2fcc688644de3eb95aee8025ce/ee3fc60554cd9eefdd745a10dda84e041a7883c0381d067e76185d342de64759",
		ID{ContainerID: "ee3fc60554cd9eefdd745a10dda84e041a7883c0381d067e76185d342de64759", PodUID: "b1e89a2fcc688644de3eb95aee8025ce", QoS: "burstable"}, true},
	// Pod level.
	{"nv", "/kubepods/besteffort/pod74ba62da-1a3d-11e7-bb11-080027cb0e22",
		ID{PodUID: "74ba62da-1a3d-11e7-bb11-080027cb0e22", QoS: "besteffort"}, true},
	{"nv", "/sys/fs/cgroup/memory/kubepods/pod74ba62da-1a3d-11e7-bb11-080027cb0e22/",
		ID{PodUID: "74ba62da-1a3d-11e7-bb11-080027cb0e22", QoS: "guaranteed"}, true},
	// CRI-O on cgroupfs.
	{"crio", "/kubepods/burstable/pod8ca306fa-3c03-47fa-97dd-19979c345572/crio-d6d725b909f37c3e232aadfbafa950a58bfe7baa579ba8c47a12be88bb921607",
		ID{Runtime: "crio", ContainerID: "d6d725b909f37c3e232aadfbafa950a58bfe7baa579ba8c47a12be88bb921607", PodUID: "8ca306fa-3c03-47fa-97dd-19979c345572", QoS: "burstable"}, true},
	{"crio", "/kubepods/burstable/pod8ca306fa-3c03-47fa-97dd-19979c345572/crio-conmon-d6d725b909f37c3e232aadfbafa950a58bfe7baa579ba8c47a12be88bb921607",
		ID{Runtime: "crio", ContainerID: "d6d725b909f37c3e232aadfbafa950a58bfe7baa579ba8c47a12be88bb921607", PodUID: "8ca306fa-3c03-47fa-97dd-19979c345572", QoS: "burstable", Conmon: true}, true},
	// A kind node on a cgroupfs Docker host: the node container is a prefix.
	{"env", "/docker/31cb02944da7a12196a193cf0e0f6c226d7c453a1db62e65ba98287593a2ee30/kubepods/besteffort/pod3d274242-8ee0-11e9-a8a6-1e68d864ef1a/3e74d3fd9db4c9dd921ae05c2502fb984d0cde1b36e581b13f79c639da4518a1",
		ID{ContainerID: "3e74d3fd9db4c9dd921ae05c2502fb984d0cde1b36e581b13f79c639da4518a1", PodUID: "3d274242-8ee0-11e9-a8a6-1e68d864ef1a", QoS: "besteffort"}, true},
	// Custom cgroup root and a nested LXC node.
	{"dd", "/lxc.payload.node1/kubelet/kubepods/besteffort/pod3d274242-8ee0-11e9-a8a6-1e68d864ef1a/3e74d3fd9db4c9dd921ae05c2502fb984d0cde1b36e581b13f79c639da4518a1",
		ID{ContainerID: "3e74d3fd9db4c9dd921ae05c2502fb984d0cde1b36e581b13f79c639da4518a1", PodUID: "3d274242-8ee0-11e9-a8a6-1e68d864ef1a", QoS: "besteffort"}, true},

	// systemd driver.
	{"nv", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod045b1e35_7f13_11e7_ac42_0050568ffca0.slice/docker-b5b6f2da8008be266864f896f93789762b2ce50792114a5c5f2cc3315af0bc70.scope",
		ID{Runtime: "docker", ContainerID: "b5b6f2da8008be266864f896f93789762b2ce50792114a5c5f2cc3315af0bc70", PodUID: "045b1e35-7f13-11e7-ac42-0050568ffca0", QoS: "besteffort"}, true},
	{"nv", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-poddd1bf9d1_241d_47f5_8e25_12de83135812.slice/cri-containerd-f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830.scope",
		ID{Runtime: "containerd", ContainerID: "f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830", PodUID: "dd1bf9d1-241d-47f5-8e25-12de83135812", QoS: "besteffort"}, true},
	{"nv", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8ca306fa_3c03_47fa_97dd_19979c345572.slice/crio-d6d725b909f37c3e232aadfbafa950a58bfe7baa579ba8c47a12be88bb921607.scope",
		ID{Runtime: "crio", ContainerID: "d6d725b909f37c3e232aadfbafa950a58bfe7baa579ba8c47a12be88bb921607", PodUID: "8ca306fa-3c03-47fa-97dd-19979c345572", QoS: "besteffort"}, true},
	{"crio", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8ca306fa_3c03_47fa_97dd_19979c345572.slice/crio-d6d725b909f37c3e232aadfbafa950a58bfe7baa579ba8c47a12be88bb921607.scope/container",
		ID{Runtime: "crio", ContainerID: "d6d725b909f37c3e232aadfbafa950a58bfe7baa579ba8c47a12be88bb921607", PodUID: "8ca306fa-3c03-47fa-97dd-19979c345572", QoS: "besteffort"}, true},
	{"crio", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8ca306fa_3c03_47fa_97dd_19979c345572.slice/crio-conmon-d6d725b909f37c3e232aadfbafa950a58bfe7baa579ba8c47a12be88bb921607.scope",
		ID{Runtime: "crio", ContainerID: "d6d725b909f37c3e232aadfbafa950a58bfe7baa579ba8c47a12be88bb921607", PodUID: "8ca306fa-3c03-47fa-97dd-19979c345572", QoS: "besteffort", Conmon: true}, true},
	// Guaranteed and burstable, same pod as above moved between classes.
	{"nv", "/kubepods.slice/kubepods-pod8ca306fa_3c03_47fa_97dd_19979c345572.slice/cri-containerd-f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830.scope",
		ID{Runtime: "containerd", ContainerID: "f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830", PodUID: "8ca306fa-3c03-47fa-97dd-19979c345572", QoS: "guaranteed"}, true},
	{"nv", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8ca306fa_3c03_47fa_97dd_19979c345572.slice/cri-containerd-f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830.scope",
		ID{Runtime: "containerd", ContainerID: "f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830", PodUID: "8ca306fa-3c03-47fa-97dd-19979c345572", QoS: "burstable"}, true},
	// Pod level, v2 mount.
	{"nv", "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8ca306fa_3c03_47fa_97dd_19979c345572.slice",
		ID{PodUID: "8ca306fa-3c03-47fa-97dd-19979c345572", QoS: "burstable"}, true},
	{"nv", "/kubepods.slice/kubepods-pod8ca306fa_3c03_47fa_97dd_19979c345572.slice",
		ID{PodUID: "8ca306fa-3c03-47fa-97dd-19979c345572", QoS: "guaranteed"}, true},
	// kind: kubelet.slice root, a static pod's 32-hex config hash.
	{"gc", "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-podb1e89a2fcc688644de3eb95aee8025ce.slice/cri-containerd-ee3fc60554cd9eefdd745a10dda84e041a7883c0381d067e76185d342de64759.scope",
		ID{Runtime: "containerd", ContainerID: "ee3fc60554cd9eefdd745a10dda84e041a7883c0381d067e76185d342de64759", PodUID: "b1e89a2fcc688644de3eb95aee8025ce", QoS: "burstable"}, true},
	{"gc", "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-podb1e89a2fcc688644de3eb95aee8025ce.slice",
		ID{PodUID: "b1e89a2fcc688644de3eb95aee8025ce", QoS: "guaranteed"}, true},
	// A kind node inside a nested LXC container (prefix before kubelet.slice).
	{"gc", "/lxc.payload.ci-node/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-podb1e89a2fcc688644de3eb95aee8025ce.slice/cri-containerd-ee3fc60554cd9eefdd745a10dda84e041a7883c0381d067e76185d342de64759.scope",
		ID{Runtime: "containerd", ContainerID: "ee3fc60554cd9eefdd745a10dda84e041a7883c0381d067e76185d342de64759", PodUID: "b1e89a2fcc688644de3eb95aee8025ce", QoS: "besteffort"}, true},

	// Not containers, or not layouts we know.
	{"nv", "/", ID{}, false},
	{"nv", "", ID{}, false},
	{"nv", "/user/1000.user/c2.session", ID{}, false},
	{"gc", "/system.slice/containerd.service", ID{}, false},
	{"nv", "/kubepods", ID{}, false},
	{"nv", "/kubepods/burstable", ID{}, false},
	{"nv", "/kubepods.slice/kubepods-burstable.slice", ID{}, false},
	{"dd", "/ecs/haissam-ecs-classic/5a0d5ceddf6c44c1928d367a815d890f/38fac3e99302b3622be089dd41e7ccf38aff368a86cc339972075136ee2710ce", ID{}, false},
	// Malformed variants of real paths.
	{"gc", "/system.slice/docker-b362fa680d463b43611d956fcaab31640a49de2d11bf2604c2af55570865e46b-.scope", ID{}, false},
	{"gc", "/system.slice/docker-b362fa680d463b43611d956fcaab31640a49de2d11bf2604c2af55570865e46b", ID{}, false},
	{"nv", "/docker/31CB02944DA7A12196A193CF0E0F6C226D7C453A1DB62E65BA98287593A2EE30", ID{}, false},
	{"nv", "/docker/31cb02944da7", ID{}, false},
	{"nv", "/kubepods/besteffort/pod74ba62da-1a3d-11e7-bb11-080027cb0e2/cb1eadb7abe3a6545e9856411207073277838e1bdc003337c2f8685faeedc32c", ID{}, false},
	{"nv", "/kubepods/besteffort/pod74ba62da_1a3d_11e7_bb11_080027cb0e22/cb1eadb7abe3a6545e9856411207073277838e1bdc003337c2f8685faeedc32c", ID{}, false},
	{"nv", "/kubepods/guaranteed/pod74ba62da-1a3d-11e7-bb11-080027cb0e22", ID{}, false},
	{"nv", "/other/pod74ba62da-1a3d-11e7-bb11-080027cb0e22", ID{}, false},
	{"nv", "/kubepods/besteffort/pod74ba62da-1a3d-11e7-bb11-080027cb0e22/not-a-container", ID{}, false},
	{"nv", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8ca306fa-3c03-47fa-97dd-19979c345572.slice", ID{}, false},
	// Slice in the wrong parent.
	{"nv", "/kubepods.slice/kubepods-besteffort.slice/kubepods-burstable-pod8ca306fa_3c03_47fa_97dd_19979c345572.slice", ID{}, false},
	{"nv", "/kubepods.slice/kubepods-burstable-podNOTAUUID.slice/cri-containerd-f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830.scope", ID{}, false},
	{"nv", "/kubepods/besteffort/pod74ba62da-1a3d-11e7-bb11-080027cb0e22/../../../docker/31cb02944da7a12196a193cf0e0f6c226d7c453a1db62e65ba98287593a2ee30", ID{}, false},
}

func TestFromPath(t *testing.T) {
	for _, tc := range pathCases {
		got, ok := FromPath(tc.path)
		if ok != tc.ok || got != tc.want {
			t.Errorf("[%s] FromPath(%q)\n got  %+v, %v\n want %+v, %v", tc.src, tc.path, got, ok, tc.want, tc.ok)
		}
	}
}

// Every layout the package claims, built from one set of IDs: what a path
// encodes must come back out, under any prefix.
func TestFromPathLayouts(t *testing.T) {
	const uid = "3d6329e5-455f-11e9-a7e5-06925242d7ea"
	const cid = "f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830"
	for _, prefix := range []string{"", "/sys/fs/cgroup/memory", "/sys/fs/cgroup", "/custom-root", "/lxc.payload.n1", "/docker/" + strings.Repeat("a", 64)} {
		for _, l := range layouts(uid, cid) {
			got, ok := FromPath(prefix + l.path)
			if !ok || got != l.want {
				t.Errorf("FromPath(%q) = %+v, %v; want %+v", prefix+l.path, got, ok, l.want)
			}
		}
	}
}

type layout struct {
	path string
	want ID
}

func layouts(uid, cid string) []layout {
	u := strings.ReplaceAll(uid, "-", "_")
	var out []layout
	for _, q := range []string{QoSGuaranteed, QoSBurstable, QoSBestEffort} {
		pod := ID{PodUID: uid, QoS: q}
		fsPod := "/kubepods/" + q + "/pod" + uid
		sdPod := "/kubepods.slice/kubepods-" + q + ".slice/kubepods-" + q + "-pod" + u + ".slice"
		kindPod := "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-" + q + ".slice/kubelet-kubepods-" + q + "-pod" + u + ".slice"
		if q == QoSGuaranteed {
			fsPod = "/kubepods/pod" + uid
			sdPod = "/kubepods.slice/kubepods-pod" + u + ".slice"
			kindPod = "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod" + u + ".slice"
		}
		with := func(rt string, conmon bool) ID {
			id := pod
			id.Runtime, id.ContainerID, id.Conmon = rt, cid, conmon
			return id
		}
		out = append(out,
			layout{fsPod, pod},
			layout{fsPod + "/" + cid, with("", false)},
			layout{fsPod + "/crio-" + cid, with(RuntimeCRIO, false)},
			layout{fsPod + "/crio-conmon-" + cid, with(RuntimeCRIO, true)},
		)
		for _, p := range []string{sdPod, kindPod} {
			out = append(out,
				layout{p, pod},
				layout{p + "/cri-containerd-" + cid + ".scope", with(RuntimeContainerd, false)},
				layout{p + "/crio-" + cid + ".scope", with(RuntimeCRIO, false)},
				layout{p + "/crio-" + cid + ".scope/container", with(RuntimeCRIO, false)},
				layout{p + "/crio-conmon-" + cid + ".scope", with(RuntimeCRIO, true)},
				layout{p + "/docker-" + cid + ".scope", with(RuntimeDocker, false)},
			)
		}
	}
	out = append(out,
		layout{"/docker/" + cid, ID{Runtime: RuntimeDocker, ContainerID: cid}},
		layout{"/system.slice/docker-" + cid + ".scope", ID{Runtime: RuntimeDocker, ContainerID: cid}},
	)
	return out
}

func FuzzFromPath(f *testing.F) {
	for _, tc := range pathCases {
		f.Add(tc.path)
	}
	for _, l := range layouts("3d6329e5-455f-11e9-a7e5-06925242d7ea", strings.Repeat("0f", 32)) {
		f.Add(l.path)
	}
	f.Fuzz(func(t *testing.T, p string) {
		id, ok := FromPath(p)
		if !ok {
			if id != (ID{}) {
				t.Fatalf("FromPath(%q) = %+v with ok=false", p, id)
			}
			return
		}
		if id.ContainerID == "" && id.PodUID == "" {
			t.Fatalf("FromPath(%q): ok with neither container nor pod", p)
		}
		if id.ContainerID != "" && !isHex(id.ContainerID, 64) {
			t.Fatalf("FromPath(%q): container ID %q", p, id.ContainerID)
		}
		if id.PodUID != "" {
			if _, valid := podUID(id.PodUID, '-'); !valid {
				t.Fatalf("FromPath(%q): pod UID %q", p, id.PodUID)
			}
			switch id.QoS {
			case QoSGuaranteed, QoSBurstable, QoSBestEffort:
			default:
				t.Fatalf("FromPath(%q): pod without QoS %q", p, id.QoS)
			}
		} else if id.QoS != "" {
			t.Fatalf("FromPath(%q): QoS %q without a pod", p, id.QoS)
		}
		switch id.Runtime {
		case "", RuntimeDocker, RuntimeContainerd, RuntimeCRIO:
		default:
			t.Fatalf("FromPath(%q): runtime %q", p, id.Runtime)
		}
		if id.Conmon && id.Runtime != RuntimeCRIO {
			t.Fatalf("FromPath(%q): conmon of runtime %q", p, id.Runtime)
		}
		if id.Sandbox {
			t.Fatalf("FromPath(%q): sandbox from a path", p)
		}
		if !strings.Contains(p, id.ContainerID) {
			t.Fatalf("FromPath(%q): container ID %q not in the path", p, id.ContainerID)
		}
		// A path is the same cgroup with or without a mount point in front.
		if len(p)+len("/sys/fs/cgroup/memory/") > maxPathLen {
			return
		}
		if again, ok2 := FromPath("/sys/fs/cgroup/memory/" + p); !ok2 || again != id {
			t.Fatalf("FromPath under a mount point: %+v, %v; want %+v", again, ok2, id)
		}
	})
}
