package notify

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/cgroup"
)

// Eventfd is a v1 memcg notification registered through cgroup.event_control
// (Documentation/admin-guide/cgroup-v1/memory.rst, "Memory thresholds" and
// "OOM Control"). Closing it unregisters it: the kernel drops the event when
// the eventfd's last reference goes. The kernel also signals it once when the
// cgroup is removed, so a reader must check that the cgroup still exists.
type Eventfd struct{ fd int }

func (e *Eventfd) Fd() int { return e.fd }

// Drain reads the counter so the fd is no longer readable.
func (e *Eventfd) Drain() error {
	var buf [8]byte
	_, err := unix.Read(e.fd, buf[:])
	if err == unix.EAGAIN {
		return nil
	}
	return err
}

func (e *Eventfd) Close() error { return unix.Close(e.fd) }

// V1Threshold fires when memory.usage_in_bytes of rel crosses bytes, in
// either direction, seen up to V1ThresholdLag late.
func V1Threshold(fs *cgroup.FS, rel string, bytes uint64) (*Eventfd, error) {
	return registerV1(fs, rel, "memory.usage_in_bytes", fmt.Sprint(bytes))
}

// V1Thresholds fires when memory.usage_in_bytes of rel crosses any of
// bytes, in either direction: one eventfd for them all. The kernel keeps
// an event of its own for each registration, each waiting on the same
// eventfd, and drops them all when the eventfd's last reference goes
// (memcg_event_wake on EPOLLHUP), so one fd serves as well as one a
// threshold: the reader tells which was crossed by the usage it reads.
func V1Thresholds(fs *cgroup.FS, rel string, bytes ...uint64) (*Eventfd, error) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd for %s: %w", fs.Path(rel, "memory.usage_in_bytes"), err)
	}
	for _, b := range bytes {
		if err := registerOn(fs, efd, rel, "memory.usage_in_bytes", fmt.Sprint(b)); err != nil {
			unix.Close(efd)
			return nil, err
		}
	}
	return &Eventfd{fd: efd}, nil
}

// V1OOM fires when rel enters an OOM condition (memory.oom_control).
func V1OOM(fs *cgroup.FS, rel string) (*Eventfd, error) {
	return registerV1(fs, rel, "memory.oom_control", "")
}

func registerV1(fs *cgroup.FS, rel, file, arg string) (*Eventfd, error) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd for %s: %w", fs.Path(rel, file), err)
	}
	if err := registerOn(fs, efd, rel, file, arg); err != nil {
		unix.Close(efd)
		return nil, err
	}
	return &Eventfd{fd: efd}, nil
}

// registerOn registers eventfd efd for rel's file (with arg) through
// cgroup.event_control.
func registerOn(fs *cgroup.FS, efd int, rel, file, arg string) error {
	target, err := fs.Open(rel, file)
	if err != nil {
		return err
	}
	// The kernel takes what it needs from the target fd during the write
	// (memcg_write_event_control fdput()s it); the event lives as long as
	// the eventfd, so the target can be closed.
	defer target.Close()
	line := fmt.Sprintf("%d %d", efd, target.Fd())
	if arg != "" {
		line += " " + arg
	}
	return fs.WriteFile(rel, "cgroup.event_control", line)
}

// ErrNotSupported is returned where a mechanism is missing on this kernel.
var ErrNotSupported = errors.New("not supported by this kernel")

// V1Notifier registers v1 memcg notifications under one hierarchy.
type V1Notifier struct {
	FS *cgroup.FS
	// ChargingCPUs is how many CPUs are taken to charge one cgroup at
	// once, for ThresholdLag; 0: DefaultChargingCPUs.
	ChargingCPUs int
}

// DefaultChargingCPUs: one or two threads growing at once, as measured
// (bench/preempt's 1- and 2-thread races, the storm on 2 CPUs).
const DefaultChargingCPUs = 2

// ThresholdLag is how far past a threshold usage can be when the kernel
// signals it (V1ThresholdLag), for the notifier's ChargingCPUs.
func (n V1Notifier) ThresholdLag() uint64 {
	cpus := n.ChargingCPUs
	if cpus <= 0 {
		cpus = DefaultChargingCPUs
	}
	return V1ThresholdLag(cpus)
}

// V1ThresholdLag is how far past a threshold a v1 cgroup's usage can be
// when the kernel signals the crossing, with cpus CPUs charging it: the
// kernel compares usage with the thresholds only once every 128 pages
// charged or uncharged on a CPU (THRESHOLDS_EVENTS_TARGET, per CPU and
// cgroup, mm/memcontrol.c), and usage also counts what each CPU took
// ahead into its charge cache, up to 64 pages (MEMCG_CHARGE_BATCH; 32
// before 5.19). So 192 pages a CPU: 768 KiB with 4 KiB pages. Measured
// here with 100 cgroups growing at once on 2 CPUs and a real-time
// listener: the first signal came up to 1.1 MiB past the threshold.
func V1ThresholdLag(cpus int) uint64 {
	return uint64(cpus) * (128 + 64) * uint64(unix.Getpagesize())
}

func (n V1Notifier) Threshold(rel string, bytes uint64) (Watch, error) {
	return asWatch(V1Threshold(n.FS, rel, bytes))
}

// Thresholds is Threshold for several thresholds on one eventfd.
func (n V1Notifier) Thresholds(rel string, bytes ...uint64) (Watch, error) {
	return asWatch(V1Thresholds(n.FS, rel, bytes...))
}

func (n V1Notifier) OOM(rel string) (Watch, error) { return asWatch(V1OOM(n.FS, rel)) }

// asWatch keeps a failed registration's nil *Eventfd out of the Watch
// interface: stored there it would not be nil, and its Close would panic.
func asWatch(e *Eventfd, err error) (Watch, error) {
	if err != nil {
		return nil, err
	}
	return e, nil
}

// Sampler is nil: the kernel signals every v1 watch itself.
func (n V1Notifier) Sampler() Sampler { return nil }
