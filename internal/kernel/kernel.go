// Package kernel says which of the kernel features the guard builds on
// this kernel has, and what the guard does without each. The guard is for
// every kernel from CentOS 7's 3.10 up; most of what it prefers came later:
//
//	feature            since  without it
//	pidfd              5.3    kill(2) through a /proc/PID handle checked just before (see internal/kill)
//	process_mrelease   5.15   none: the victim's memory comes back as it exits
//	openat2            5.6    open(2) with a lexical check, and fstatfs: a cgroup file system
//	cgroup.kill (v2)   5.14   every task signalled, frozen first (cgroup.freeze, 5.2)
//	NSpid              4.1    a container's init told by the runtime's pid instead
//	oom_kill (v1)      4.13   kernel kills counted from the OOM eventfd, the processes gone, and the kernel log
//	oom_wait (v1)      3.12   the kernel's OOM killer left on: no hold (--v1-hold-oom), a lost race is the kernel's kill
//
// Each probe runs once and is cached: the kill path never pays a failing
// system call. Detect gives them all, for the start-up log line and the
// metric.
package kernel

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Feature names, as OOMGUARD_HIDE_FEATURES, the log line and the metric
// spell them.
const (
	Pidfd           = "pidfd"
	ProcessMrelease = "process_mrelease"
	Openat2         = "openat2"
	CgroupKill      = "cgroup.kill"
	NSpid           = "nspid"
	OOMKillCounter  = "oom_kill"
	OOMWait         = "oom_wait"
)

// HideEnv is a test-only switch: a comma-separated list of feature names
// that the guard must treat as missing although the running kernel has
// them. A system call can be taken away for real (cmd/oldkernel's seccomp
// filter answers ENOSYS); a line of a kernel file cannot, so the old
// kernel's files are shown to the guard this way ("faults the real thing
// cannot produce on demand"). Nothing in production sets it.
const HideEnv = "OOMGUARD_HIDE_FEATURES"

var hidden = sync.OnceValue(func() map[string]bool {
	m := map[string]bool{}
	for _, f := range strings.Split(os.Getenv(HideEnv), ",") {
		if f = strings.TrimSpace(f); f != "" {
			m[f] = true
		}
	}
	return m
})

// Hidden tells whether the test-only switch hides feature name.
func Hidden(name string) bool { return hidden()[name] }

// missing records features found missing after their probe (a system call
// that answered ENOSYS on the kill path although the probe found it): from
// then on they count as absent.
var missing sync.Map

// MarkMissing records that a feature turned out to be absent.
func MarkMissing(name string) { missing.Store(name, true) }

func marked(name string) bool { _, ok := missing.Load(name); return ok }

func probe(name string, f func() bool) func() bool {
	once := sync.OnceValue(func() bool { return !Hidden(name) && f() })
	return func() bool { return once() && !marked(name) }
}

// enosys tells whether a system call answered "not implemented": the
// kernel has no such call (or a seccomp filter says so, as an old kernel would).
func enosys(err error) bool { return err == unix.ENOSYS }

// HasPidfd: pidfd_open (5.3) and pidfd_send_signal (5.1).
var HasPidfd = probe(Pidfd, func() bool {
	fd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		return !enosys(err)
	}
	defer unix.Close(fd)
	return !enosys(unix.PidfdSendSignal(fd, 0, nil, 0))
})

// HasProcessMrelease: process_mrelease (5.15). A bad descriptor is refused
// with EBADF by a kernel that has the call.
var HasProcessMrelease = probe(ProcessMrelease, func() bool {
	_, _, errno := unix.Syscall(unix.SYS_PROCESS_MRELEASE, ^uintptr(0), 0, 0)
	return errno != unix.ENOSYS
})

// HasOpenat2: openat2 (5.6), probed on the root directory.
var HasOpenat2 = probe(Openat2, func() bool {
	fd, err := unix.Openat2(unix.AT_FDCWD, "/", &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC})
	if err == nil {
		unix.Close(fd)
	}
	return !enosys(err)
})

// HasNSpid: the NSpid line of /proc/PID/status (4.1).
var HasNSpid = probe(NSpid, func() bool {
	data, err := os.ReadFile("/proc/self/status")
	return err == nil && bytes.Contains(data, []byte("\nNSpid:"))
})

// oomKillCounter caches, per v1 hierarchy, whether memory.oom_control has
// the oom_kill counter (4.13).
var oomKillCounter sync.Map // root -> bool

// HasOOMKillCounter tells whether the v1 memory hierarchy at root counts
// OOM kills in memory.oom_control (4.13+; 3.10 has only oom_kill_disable
// and under_oom). The root cgroup's file is read once.
func HasOOMKillCounter(root string) bool {
	if Hidden(OOMKillCounter) {
		return false
	}
	if v, ok := oomKillCounter.Load(root); ok {
		return v.(bool)
	}
	data, err := os.ReadFile(filepath.Join(root, "memory.oom_control"))
	has := err != nil || bytes.Contains(data, []byte("\noom_kill ")) // unreadable: assume a modern kernel
	oomKillCounter.Store(root, has)
	return has
}

var cgroupKill sync.Map // root -> bool

// HasCgroupKill tells whether the v2 hierarchy at root has cgroup.kill
// (5.14), looked at once per root. The root cgroup has none of its own: a
// child is looked at; with none yet, it is assumed (a kill then falls back
// on ENOENT).
func HasCgroupKill(root string) bool {
	if Hidden(CgroupKill) {
		return false
	}
	if v, ok := cgroupKill.Load(root); ok {
		return v.(bool)
	}
	ents, err := os.ReadDir(root)
	if err != nil {
		return true
	}
	for _, e := range ents {
		if e.IsDir() {
			_, err := os.Stat(filepath.Join(root, e.Name(), "cgroup.kill"))
			cgroupKill.Store(root, err == nil)
			return err == nil
		}
	}
	return true
}

// HasOOMWait tells whether a task that meets its v1 cgroup's limit with
// oom_kill_disable set waits for memory outside every lock it held: since
// 3.12 ("mm: memcg: do not trap chargers with full callstack on OOM") the
// charge fails, the page fault unwinds, and the task sleeps, killable, in
// mem_cgroup_oom_synchronize. Before, it slept inside the charge, holding
// mmap_sem and what its caller held, and a victim that needed one of them
// to exit never did: a hold there could hang the cgroup. A release that
// does not parse (a distribution's own) counts as old, so CentOS 7's
// 3.10.0-x never holds.
var HasOOMWait = probe(OOMWait, func() bool { return releaseAtLeast(Release(), 3, 12) })

// releaseAtLeast tells whether a uname release is major.minor or later.
func releaseAtLeast(release string, major, minor int) bool {
	var ma, mi int
	if n, _ := fmt.Sscanf(release, "%d.%d", &ma, &mi); n != 2 {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

// Release is the running kernel's release (uname -r).
var Release = sync.OnceValue(func() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
})

// Feature is one feature's state on this kernel.
type Feature struct {
	Name     string
	Since    string // the first kernel release with it
	Present  bool
	Fallback string // what the guard does without it
}

// Detect probes every feature the guard uses for a memory hierarchy at
// root (v2 tells a unified one). It is for the start-up log line and the
// metric; the kill path asks the Has functions, which are cached.
func Detect(root string, v2 bool) []Feature {
	fs := []Feature{
		{Pidfd, "5.3", HasPidfd(), "kill(2) through a /proc/PID handle checked against the start time, looked up right before the signal (v1 container kill: while frozen)"},
		{ProcessMrelease, "5.15", HasProcessMrelease(), "none: a victim's memory is freed as it exits, not at once"},
		{Openat2, "5.6", HasOpenat2(), "open(2) of lexically checked paths, fstatfs: only cgroup files"},
		{NSpid, "4.1", HasNSpid(), "a container's init told by the pid its runtime reports; without a runtime a child OOM is reported as CgroupOOM only"},
	}
	if v2 {
		fs = append(fs, Feature{CgroupKill, "5.14", HasCgroupKill(root), "every task signalled one by one, frozen first (cgroup.freeze)"})
	} else {
		fs = append(fs, Feature{OOMKillCounter, "4.13", HasOOMKillCounter(root), "kernel kills counted from the OOM eventfd, the processes gone since, and the kernel log"},
			Feature{OOMWait, "3.12", HasOOMWait(), "no hold (--v1-hold-oom): a race the guard loses is the kernel's kill"})
	}
	return fs
}

// Summary is Detect as one log line.
func Summary(fs []Feature) string {
	var b strings.Builder
	b.WriteString("kernel " + Release() + ":")
	for _, f := range fs {
		if f.Present {
			b.WriteString(" " + f.Name + " yes;")
		} else {
			b.WriteString(" " + f.Name + " (" + f.Since + ") MISSING, fallback: " + f.Fallback + ";")
		}
	}
	return strings.TrimSuffix(b.String(), ";")
}
