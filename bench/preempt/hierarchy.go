package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/guard"
	"github.com/oom-guard/oom-guard/internal/kill"
	"github.com/oom-guard/oom-guard/internal/notify"
	"github.com/oom-guard/oom-guard/internal/testenv"
)

// hierarchy is what the benchmark does differently on cgroup v1 and v2.
type hierarchy struct {
	version string
	mount   *cgroup.FS // the whole hierarchy; the benchmark's cgroups go below
	// limitFile is where a cgroup's hard limit is written.
	limitFile string
	// killsFile holds the kernel's OOM kill count of a cgroup, key oom_kill.
	killsFile string
}

var (
	v1Hierarchy = hierarchy{version: "v1", mount: &cgroup.FS{Root: testenv.V1MemoryRoot},
		limitFile: "memory.limit_in_bytes", killsFile: "memory.oom_control"}
	v2Hierarchy = hierarchy{version: "v2", mount: &cgroup.FS{Root: testenv.V2Root},
		limitFile: "memory.max", killsFile: "memory.events"}
)

// check fails unless the hierarchy is mounted here with its memory controller.
func (h hierarchy) check() error {
	m, err := cgroup.Open(h.mount.Root)
	if err != nil {
		return err
	}
	if m.Version().String() != h.version {
		return fmt.Errorf("%s is cgroup %s, want %s", h.mount.Root, m.Version(), h.version)
	}
	return nil
}

// mkdir makes a cgroup whose children get the memory controller (v2 needs
// it said; v1 always has it).
func (h hierarchy) mkdir(rel string) error {
	if err := h.mount.Mkdir(rel); err != nil {
		return err
	}
	if h.version == "v2" {
		return h.mount.WriteFile(rel, "cgroup.subtree_control", "+memory")
	}
	return nil
}

// mkLimited makes a leaf cgroup with a limit of limit bytes.
func (h hierarchy) mkLimited(rel string, limit uint64) error {
	if err := h.mount.Mkdir(rel); err != nil {
		return err
	}
	return h.mount.WriteFile(rel, h.limitFile, strconv.FormatUint(limit, 10))
}

// kernelKills is the kernel's OOM kill count in rel and below.
func (h hierarchy) kernelKills(rel string) (uint64, error) {
	data, err := h.mount.ReadFile(rel, h.killsFile)
	if err != nil {
		return 0, err
	}
	m, err := cgroup.ParseFlatKeyed(strings.NewReader(string(data)))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", h.mount.Path(rel, h.killsFile), err)
	}
	return m["oom_kill"], nil
}

// mechanisms are the v2 crossing detectors the benchmark compares (see
// internal/notify/memcg_v2.go); v1 has one, the kernel's threshold eventfd.
var mechanisms = map[string]func(o *notify.V2Options){
	"events":          func(o *notify.V2Options) { o.Poll, o.Events, o.PSI = false, true, false },
	"psi":             func(o *notify.V2Options) { o.Poll, o.Events, o.PSI = false, false, true },
	"poll":            func(o *notify.V2Options) { o.Poll, o.Events, o.PSI = true, false, false },
	"poll+events":     func(o *notify.V2Options) { o.Poll, o.Events, o.PSI = true, true, false },
	"poll+events+psi": func(o *notify.V2Options) { o.Poll, o.Events, o.PSI = true, true, true },
}

// guardParts are the hierarchy below one cgroup and the notifier and killer
// the guard runs with on it, the notifier's counter of samples (v2; nil on
// v1) and what to call once the guard has stopped.
type guardParts struct {
	mem      cgroup.Memory
	notifier guard.Notifier
	killer   guard.ProcessKiller
	samples  func() uint64
	close    func()
}

// parts opens the hierarchy below cgroup base for a guard detecting
// crossings with mechanism.
func (h hierarchy) parts(base, mechanism string) (guardParts, error) {
	mem, err := cgroup.Open(h.mount.Path(base, ""))
	if err != nil {
		return guardParts{}, err
	}
	k := kill.Killer{Mem: mem.FS(), Self: os.Getpid()}
	if h.version == "v1" {
		return guardParts{mem: mem, notifier: notify.V1Notifier{FS: mem.FS()}, killer: k, close: func() {}}, nil
	}
	opts := notify.DefaultV2Options()
	set, ok := mechanisms[mechanism]
	if !ok {
		return guardParts{}, fmt.Errorf("unknown v2 mechanism %q", mechanism)
	}
	set(&opts)
	n, err := notify.NewV2Notifier(mem.FS(), opts)
	if err != nil {
		return guardParts{}, err
	}
	k.Unified = true
	return guardParts{mem: mem, notifier: n, killer: k, samples: n.Samples, close: func() { n.Close() }}, nil
}
