// Package vm runs a package's Go tests inside a QEMU virtual machine that
// boots a real Linux kernel with cgroup v2, driven by plain `go test` on the
// host, and reports each test that ran in the VM as a subtest of the host
// test: passed, failed (with its output) or skipped, as it did in there.
//
// This machine runs the memory controller on cgroup v1, so code for cgroup
// v2 (memory.events, memory.pressure, memory.reclaim, a global OOM) can only
// meet a real kernel in a VM. A host test boots one:
//
//	func TestCgroupV2InVM(t *testing.T) {
//		vm.RunTests(t, ".", "^TestV2")
//	}
//
// and the tests it names skip on the host and run in the VM:
//
//	func TestV2Limit(t *testing.T) {
//		vm.GuestOnly(t)
//		m, err := cgroup.Open("/sys/fs/cgroup") // a real cgroup2 mount
//		...
//	}
//
// How: the package's test binary is built static (CGO_ENABLED=0 go test
// -c) and packed with a tiny static /init (./init) into an uncompressed
// cpio initramfs. QEMU boots Debian's kernel (scripts/vm-kernel fetches it)
// with it: /init mounts /proc, /sys, /dev and cgroup2 at /sys/fs/cgroup with
// the memory controller enabled, runs the binary as `-test.v=test2json`
// (the mode `go test -json` uses) with its output on a serial port of its
// own, sends back the exit status and the files the tests left in OutDir()
// on another, and powers off. On the host, `go tool test2json` turns the
// output into events, exactly as `go test -json` does, and Run replays
// them as subtests. A VM that crashes, panics its kernel or runs out of
// time is a failure of the host test, with the tail of the kernel console.
//
// In the VM: everything runs as root in the root cgroup; there is no swap,
// no network but loopback (Options.Net adds QEMU's user-mode network), and
// / is the initramfs (tmpfs: its pages are shmem, not reclaimable page
// cache; set Options.DiskMiB for an ext4 /tmp on a virtual disk). Host
// directories can be shared in read-only (Options.Shares, virtio-9p):
// package kube/vmnode runs a kubelet node from the host's own binaries so. The package's testdata directory is copied in and is the
// test binary's working directory's testdata, as under go test. The
// environment is OOMGUARD_VM=1, OOMGUARD_VM_OUT, CI (passed through from the
// host, so testenv.Skip fails on CI in the VM too), PATH, HOME, TMPDIR and
// Options.Env.
//
// Prerequisites (scripts/vm-kernel installs both): qemu-system-x86_64, and
// Debian's kernel in /var/cache/oom-guard/vm (or $OOMGUARD_VM_CACHE), or
// the kernel image named by $OOMGUARD_VM_KERNEL. Without them a host test
// skips, or fails when CI=true, saying to run scripts/vm-kernel. Root is not
// needed on the host: QEMU emulates the CPU, and in the VM every test is
// root. Under emulation a boot takes about 3 s before the first test runs.
package vm

import (
	"os"
	"testing"
	"time"
)

// Guest environment.
const (
	// EnvGuest is "1" in the VM, in the test binary's environment.
	EnvGuest = "OOMGUARD_VM"
	// EnvOut names the directory in the VM whose regular files come back
	// as Result.Files.
	EnvOut = "OOMGUARD_VM_OUT"
)

// Host environment.
const (
	// EnvKernel names the kernel image to boot, instead of the cache's.
	EnvKernel = "OOMGUARD_VM_KERNEL"
	// EnvCache is the cache directory scripts/vm-kernel fills.
	EnvCache = "OOMGUARD_VM_CACHE"
	// EnvAccel sets QEMU's accelerator, "tcg" (emulation, the default) or
	// "kvm" (for a machine where KVM really works).
	EnvAccel = "OOMGUARD_VM_ACCEL"
	// EnvStream, when "1", copies the VM's test output to the host's
	// stderr as it comes, for watching a hang, and the kernel console
	// when the VM has ended.
	EnvStream = "OOMGUARD_VM_STREAM"
)

// DefaultCache is where scripts/vm-kernel puts the kernel.
const DefaultCache = "/var/cache/oom-guard/vm"

// InGuest reports whether this process runs in the harness's VM.
func InGuest() bool { return os.Getenv(EnvGuest) == "1" }

// GuestOnly skips the test unless it runs in the VM. The skip is a plain
// t.Skip even under CI=true: on the host the test is not missing, the host
// test that boots the VM runs it there.
func GuestOnly(t testing.TB) {
	t.Helper()
	if !InGuest() {
		t.Skip("runs only in the cgroup v2 VM, through the host test that calls vm.Run")
	}
}

// OutDir is the directory (in the VM) for files to bring back to the host:
// each regular file in it at the end comes back in Result.Files.
func OutDir() string { return os.Getenv(EnvOut) }

// Options say what to run in the VM and how big the VM is.
type Options struct {
	// Run is the -test.run pattern for the binary in the VM. Required: a
	// pattern that matches no test is an error, not a silent pass.
	Run string
	// Skip is its -test.skip pattern, if any.
	Skip string
	// Args are more flags for the test binary, e.g. -test.count=3.
	Args []string
	// Env is added to the binary's environment in the VM ("KEY=value").
	Env []string
	// Timeout bounds the whole run, build and boot included (default 3
	// minutes, and never past the host test's own deadline). The binary in
	// the VM gets a -test.timeout that ends 15 s before, so that a hung
	// test ends with its goroutine dump rather than with QEMU being
	// killed.
	Timeout time.Duration
	// MemoryMiB is the VM's RAM (default 512) and CPUs its processor count
	// (default 2).
	MemoryMiB, CPUs int
	// DiskMiB, if positive, gives the VM a virtual disk of that size with
	// an ext4 file system mounted on /tmp (so TMPDIR and t.TempDir), for
	// tests that need real, reclaimable page cache. It costs about a
	// second of boot: the disk and ext4 drivers are modules to load.
	DiskMiB int
	// Shares are host directories the guest sees read-only (virtio-9p,
	// mounted by /init before the test binary starts).
	Shares []Share
	// Net, if set, gives the VM a network card on QEMU's user-mode
	// network (slirp): the guest is GuestIP on eth0, with a route to its
	// /24 only, and reaches the loopback of the network namespace QEMU
	// runs in at HostIP.
	Net *Net
	// Modules are more kernel modules to load (by name, as in modprobe;
	// their dependencies are found and loaded first), from the kernel
	// cache's kernel/ tree (scripts/vm-kernel keeps only some).
	Modules []string
	// Controllers are the cgroup v2 controllers enabled below the root
	// (default: memory).
	Controllers []string
}

// Share is a host directory, mounted read-only in the guest at GuestPath.
type Share struct {
	HostPath, GuestPath string
}

// Addresses of QEMU's user-mode network, as the guest sees them.
const (
	GuestIP = "10.0.2.15"
	HostIP  = "10.0.2.2" // the loopback (127.0.0.1) of QEMU's network namespace
)

// Net is the VM's user-mode network.
type Net struct {
	// NetNS, if set, is the network namespace QEMU runs in (a path such
	// as /var/run/netns/NAME): the guest's traffic to HostIP goes to its
	// loopback, traffic to anything else to what that namespace routes.
	NetNS string
	// HostFwd are QEMU hostfwd rules (e.g. "tcp:10.0.2.15:10250-:10250":
	// a listener in QEMU's namespace forwarded to the guest's port).
	HostFwd []string
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = 3 * time.Minute
	}
	if o.MemoryMiB <= 0 {
		o.MemoryMiB = 512
	}
	if o.CPUs <= 0 {
		o.CPUs = 2
	}
	if len(o.Controllers) == 0 {
		o.Controllers = []string{"memory"}
	}
	return o
}

// RunTests runs the tests of package pkg that match run in a VM with the
// default options and reports them as subtests of t. pkg is as `go test`
// takes it, relative to the calling test's working directory (its package
// directory): "." for the caller's own package.
func RunTests(t *testing.T, pkg, run string) *Result {
	t.Helper()
	return Run(t, pkg, Options{Run: run})
}

// Run runs pkg's tests in a VM as opts say and reports them as subtests of
// t (see Result.Report). It skips t, or fails it under CI=true, when QEMU
// or the kernel is missing, and never nests: in the VM it skips.
func Run(t *testing.T, pkg string, opts Options) *Result {
	t.Helper()
	res, err := Boot(t, pkg, opts)
	if res != nil {
		t.Logf("vm: %s", res.Timing())
		res.Report(t)
	}
	if err != nil {
		t.Error(err)
	}
	return res
}
