package kube

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The kernel tunables the kubelet sets at start (setupKernelTunables).
var kubeletSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// Host directories the parts make outside Dir whatever they are told: the
// kubelet's device-plugin socket directory is a constant
// (/var/lib/kubelet/device-plugins), libcni caches results in /var/lib/cni,
// `ip netns add` makes /var/run/netns. Those that did not exist before the
// cluster are removed with it.
var hostDirs = []string{"/var/lib/kubelet", "/var/lib/cni", "/var/run/netns"}

// recordHostDirs notes which of hostDirs are absent now (before the
// cluster makes them), in dir/created; a record from a crashed run is kept.
func recordHostDirs(dir string) error {
	file := filepath.Join(dir, "created")
	if _, err := os.Stat(file); err == nil {
		return nil
	}
	var absent []string
	for _, d := range hostDirs {
		if _, err := os.Stat(d); os.IsNotExist(err) {
			absent = append(absent, d)
		}
	}
	return os.WriteFile(file, []byte(strings.Join(absent, "\n")), 0o600)
}

// removeHostDirs removes what recordHostDirs found absent. /var/run/netns
// only if empty: other namespaces may have been added since.
func removeHostDirs(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "created"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range strings.Fields(string(b)) {
		switch {
		case !slices.Contains(hostDirs, d):
			continue
		case d == "/var/run/netns":
			removeNetNSDir(d)
		default:
			if err := os.RemoveAll(d); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// removeNetNSDir removes the namespace directory if it holds no namespace:
// `ip netns add` made it a mount point (bound on itself, shared), so that
// mount goes first.
func removeNetNSDir(d string) {
	entries, err := os.ReadDir(d)
	if err != nil || len(entries) > 0 {
		return
	}
	real, err := filepath.EvalSymlinks(d)
	if err != nil {
		return
	}
	for attempt := 0; attempt < 5; attempt++ {
		if unix.Unmount(real, unix.MNT_DETACH) != nil {
			break
		}
	}
	_ = os.Remove(real)
}

// Where containerd 1.6 puts its shims' sockets, whatever its state
// directory: /run/containerd/s/<sha256 of address/namespace/id>.
const shimSocketDir = "/run/containerd/s"

// saveSysctls records the tunables before the kubelet changes them; a
// record from a crashed run is kept, since it holds the originals.
func (c *Cluster) saveSysctls() error {
	file := c.path("sysctls")
	if _, err := os.Stat(file); err == nil {
		return nil
	}
	var b strings.Builder
	for _, name := range kubeletSysctls {
		v, err := os.ReadFile(filepath.Join("/proc/sys", name))
		if err != nil {
			return fmt.Errorf("read sysctl %s: %w", name, err)
		}
		fmt.Fprintf(&b, "%s=%s\n", name, strings.TrimSpace(string(v)))
	}
	return os.WriteFile(file, []byte(b.String()), 0o600)
}

func restoreSysctls(dir string) error {
	f, err := os.Open(filepath.Join(dir, "sysctls"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	var errs []error
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), "=")
		if !ok || !slices.Contains(kubeletSysctls, name) {
			continue
		}
		if err := os.WriteFile(filepath.Join("/proc/sys", name), []byte(value), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore sysctl %s=%s: %w", name, value, err))
		}
	}
	return errors.Join(errs...)
}

// removeContainers deletes every task and container in the harness's
// containerd through containerd itself, so that it unmounts their root
// file systems and ends their shims (which remove their sockets).
func (c *Cluster) removeContainers() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := c.ctr(ctx, nil, "tasks", "ls", "-q")
	if err != nil {
		return
	}
	tasks := strings.Fields(out)
	for _, id := range tasks {
		_, _ = c.ctr(ctx, nil, "tasks", "kill", "--all", "--signal", "SIGKILL", id)
	}
	for _, id := range tasks {
		for attempt := 0; attempt < 50; attempt++ {
			if _, err := c.ctr(ctx, nil, "tasks", "delete", id); err == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if out, err := c.ctr(ctx, nil, "containers", "ls", "-q"); err == nil {
		for _, id := range strings.Fields(out) {
			_, _ = c.ctr(ctx, nil, "containers", "delete", id)
		}
	}
}

// removeLeftovers undoes everything a cluster with state directory dir
// made on the host (see the package comment): after Stop, and before
// Start for whatever a crashed run left.
func removeLeftovers(dir string) error {
	if _, err := os.Stat(dir); os.IsNotExist(err) {
		// Without the state directory nothing here is ours, except a
		// namespace of our name with nothing in it.
		if n := len(netNSProcesses()); n == 0 {
			return deleteNetNS()
		}
		return fmt.Errorf("network namespace %s has processes and %s is gone: not removing what may not be ours", NetNS, dir)
	}
	var errs []error
	killAll(func() []int { return append(netNSProcesses(), kubepodsProcesses()...) })
	removeShimSockets(dir)
	if err := unmountUnder(dir); err != nil {
		errs = append(errs, err)
	}
	if err := removeCgroupTrees("kubepods"); err != nil {
		errs = append(errs, err)
	}
	if err := restoreSysctls(dir); err != nil {
		errs = append(errs, err)
	}
	if err := deleteNetNS(); err != nil {
		errs = append(errs, err)
	}
	if err := removeHostDirs(dir); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		// Keep dir: it marks the kubepods tree (or whatever is left) as
		// ours for the next run to finish the job.
		return errors.Join(errs...)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	// Empty directories containerd makes outside its state (never one
	// that holds anything: another containerd's).
	_ = os.Remove(shimSocketDir)
	_ = os.Remove("/run/containerd")
	return nil
}

// killAll SIGKILLs what list returns until it returns nothing (bounded).
func killAll(list func() []int) {
	self := os.Getpid()
	for attempt := 0; attempt < 100; attempt++ {
		pids := list()
		pids = slices.DeleteFunc(pids, func(p int) bool { return p == self })
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// netNSProcesses lists the processes whose network namespace is NetNS:
// the cluster's daemons, the containerd shims, host-network pods.
func netNSProcesses() []int {
	ino, ok := netNSInode()
	if !ok {
		return nil
	}
	var pids []int
	for _, pid := range allPids() {
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && st.Ino == ino && !isZombie(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// kubepodsProcesses lists every process in a pod's cgroup.
func kubepodsProcesses() []int {
	var pids []int
	_ = filepath.WalkDir(PodCgroupRoot, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && !isZombie(pid) {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

func allPids() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z' || b[i+2] == 'X'
}

// removeShimSockets removes the sockets of shims that were killed, for the
// tasks whose bundles are in dir.
func removeShimSockets(dir string) {
	socket := filepath.Join(dir, "run", "containerd.sock")
	bundles, _ := filepath.Glob(filepath.Join(dir, "containerd", "state", "io.containerd.runtime.v2.task", "*", "*"))
	for _, b := range bundles {
		ns, id := filepath.Base(filepath.Dir(b)), filepath.Base(b)
		sum := sha256.Sum256([]byte(filepath.Join(socket, ns, id)))
		_ = os.Remove(filepath.Join(shimSocketDir, fmt.Sprintf("%x", sum)))
	}
}

// unmountUnder detaches every mount point at or below dir, deepest first.
func unmountUnder(dir string) error {
	for attempt := 0; attempt < 5; attempt++ {
		mounts, err := mountsUnder(dir)
		if err != nil {
			return err
		}
		if len(mounts) == 0 {
			return nil
		}
		for i := len(mounts) - 1; i >= 0; i-- {
			_ = unix.Unmount(mounts[i], unix.MNT_DETACH)
		}
	}
	mounts, _ := mountsUnder(dir)
	if len(mounts) > 0 {
		return fmt.Errorf("still mounted under %s: %v", dir, mounts)
	}
	return nil
}

func mountsUnder(dir string) ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var mounts []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 {
			mp := unescapeMount(f[4])
			if mp == dir || strings.HasPrefix(mp, dir+"/") {
				mounts = append(mounts, mp)
			}
		}
	}
	return mounts, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeCgroupTrees removes /<name> and everything below it in every
// cgroup hierarchy mounted on the host (each v1 controller and the v2
// one), deepest first. The processes must be gone already.
func removeCgroupTrees(name string) error {
	roots, err := cgroupMounts()
	if err != nil {
		return err
	}
	var errs []error
	for _, root := range roots {
		top := filepath.Join(root, name)
		if _, err := os.Stat(top); err != nil {
			continue
		}
		var dirs []string
		_ = filepath.WalkDir(top, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			var rmErr error
			for attempt := 0; attempt < 50; attempt++ {
				if rmErr = unix.Rmdir(dirs[i]); rmErr == nil || errors.Is(rmErr, unix.ENOENT) {
					rmErr = nil
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if rmErr != nil {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dirs[i], rmErr))
			}
		}
	}
	return errors.Join(errs...)
}

// cgroupMounts lists the mount points of cgroup file systems, one per
// hierarchy.
func cgroupMounts() ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var roots []string
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, fsType := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(fsType) == 0 || (fsType[0] != "cgroup" && fsType[0] != "cgroup2") || f[3] != "/" {
			continue
		}
		mp := unescapeMount(f[4])
		if !slices.Contains(roots, mp) {
			roots = append(roots, mp)
		}
	}
	return roots, nil
}
