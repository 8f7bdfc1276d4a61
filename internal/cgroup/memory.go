package cgroup

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/kernel"
)

// Version is the cgroup hierarchy's version.
type Version int

const (
	VersionV1 Version = 1
	VersionV2 Version = 2
)

func (v Version) String() string { return fmt.Sprintf("v%d", int(v)) }

// Stat is what the guard needs of memory.stat.
type Stat struct {
	// Reclaimable is the page cache the kernel can drop or write back
	// before it has to OOM-kill: inactive_file + active_file, counted over
	// the cgroup and its descendants.
	Reclaimable uint64
	// Text is the file as the seed's event carries it: "key value|key value|".
	Text string
}

// Memory is the memory controller of one hierarchy. V1 and V2 implement it;
// everything above this package is version-blind.
type Memory interface {
	Version() Version
	FS() *FS
	// Limit is the cgroup's own hard limit, Unlimited when it has none.
	Limit(rel string) (uint64, error)
	Usage(rel string) (uint64, error)
	Stat(rel string) (Stat, error)
	// OOMKills is the kernel's cumulative count of OOM kills of the
	// cgroup's own processes (not its descendants'), whichever limit was
	// hit: summed over a sub-tree, each kill counts once.
	OOMKills(rel string) (uint64, error)
	// OOMGroupKills is the kernel's cumulative count of the times it
	// killed the cgroup whole for memory.oom.group (v2 oom_group_kill in
	// memory.events.local, 5.17+): once per group kill, however many
	// processes and threads it took. ErrNoGroupKillCounter on v1 and on
	// older kernels.
	OOMGroupKills(rel string) (uint64, error)
	// OOMGroup tells whether the kernel's OOM killer kills the cgroup
	// whole (v2 memory.oom.group, set by the kubelet on containers since
	// 1.28); always false on v1, which has no such setting.
	OOMGroup(rel string) (bool, error)
	// Reclaim asks the kernel to reclaim up to bytes from the cgroup and
	// gives up after budget (ErrBudget): reclaim can take as long as the
	// kernel finds pages to drop.
	Reclaim(rel string, bytes uint64, budget time.Duration) error
	// SoftLimit reads and SetSoftLimit sets the limit at which the kernel
	// starts reclaiming from the cgroup early (v1 soft limit, v2 memory.high).
	SoftLimit(rel string) (uint64, error)
	SetSoftLimit(rel string, bytes uint64) error
	// OOMKillDisabled reads and SetOOMKillDisable sets v1's
	// oom_kill_disable (memory.oom_control): while it is set, a task that
	// meets the cgroup's limit waits for memory instead of the kernel
	// killing one. ErrNoOOMHold on v2, which has no such setting.
	OOMKillDisabled(rel string) (bool, error)
	SetOOMKillDisable(rel string, disable bool) error
	// UnderOOM tells whether the kernel's OOM handling of the cgroup is
	// under way (v1 under_oom; with oom_kill_disable: its tasks wait).
	// ErrNoOOMHold on v2.
	UnderOOM(rel string) (bool, error)
	// LimitFile is the file whose modification means the limit changed.
	LimitFile() string
	// Handle keeps the cgroup's usage, limit and stat files open for
	// fast repeated reads.
	Handle(rel string) (*Handle, error)
}

// Open returns the memory controller rooted at dir, which must be a memory
// cgroup directory: the mount point of a v1 memory hierarchy or of cgroup2
// with the memory controller, or any cgroup below one.
func Open(dir string) (Memory, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return nil, fmt.Errorf("cgroup root %s: %w", dir, err)
	}
	fs := &FS{Root: dir}
	switch st.Type {
	case unix.CGROUP_SUPER_MAGIC:
		if _, err := os.Stat(fs.Path("/", "memory.usage_in_bytes")); err != nil {
			return nil, fmt.Errorf("cgroup root %s: not a memory cgroup (no memory.usage_in_bytes)", dir)
		}
		return &V1{fs: fs}, nil
	case unix.CGROUP2_SUPER_MAGIC:
		ctrl, err := fs.ReadFile("/", "cgroup.controllers")
		if err != nil {
			return nil, fmt.Errorf("cgroup root %s: %w", dir, err)
		}
		if !hasWord(string(ctrl), "memory") {
			return nil, fmt.Errorf("cgroup root %s: memory controller not enabled (cgroup.controllers: %q)", dir, strings.TrimSpace(string(ctrl)))
		}
		return &V2{fs: fs}, nil
	default:
		return nil, fmt.Errorf("cgroup root %s: not a cgroup file system", dir)
	}
}

func hasWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}

// statText renders memory.stat the way the seed's event does.
func statText(data []byte) string {
	var b strings.Builder
	for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		b.Write(bytes.TrimSpace(line))
		b.WriteByte('|')
	}
	return b.String()
}

func readStat(fs *FS, rel string, inactive, active string) (Stat, error) {
	data, err := fs.ReadFile(rel, "memory.stat")
	if err != nil {
		return Stat{}, err
	}
	return parseStat(data, fs.Path(rel, "memory.stat"), inactive, active)
}

// parseStat is memory.stat as read (from file name), its reclaimable page
// cache the sum of the inactive and active file counters named.
func parseStat(data []byte, name, inactive, active string) (Stat, error) {
	m, err := ParseFlatKeyed(bytes.NewReader(data))
	if err != nil {
		return Stat{}, fmt.Errorf("%s: %w", name, err)
	}
	return Stat{Reclaimable: m[inactive] + m[active], Text: statText(data)}, nil
}

// V1 is a cgroup v1 memory hierarchy.
type V1 struct {
	fs           *FS
	noForceEmpty atomic.Bool // the kernel refuses force_empty on cgroups with tasks (3.8-3.15)
	// writeBounded is fs.WriteBounded; tests put a refusing kernel in its place.
	writeBounded func(rel, file, data string, budget time.Duration) error
}

func (m *V1) Version() Version  { return VersionV1 }
func (m *V1) FS() *FS           { return m.fs }
func (m *V1) LimitFile() string { return "memory.limit_in_bytes" }

func (m *V1) Limit(rel string) (uint64, error) {
	v, err := m.fs.ReadUint(rel, "memory.limit_in_bytes")
	if err == nil && v >= v1NoLimit {
		v = Unlimited
	}
	return v, err
}

func (m *V1) Usage(rel string) (uint64, error) { return m.fs.ReadUint(rel, "memory.usage_in_bytes") }

// Stat uses the total_ counters: they include descendants, as the limit does.
func (m *V1) Stat(rel string) (Stat, error) {
	return readStat(m.fs, rel, "total_inactive_file", "total_active_file")
}

// OOMKills reads oom_kill from memory.oom_control (kernel 4.13+). It is
// local to the cgroup: the victim's own memcg, not its ancestors. A kernel
// before 4.13 has no such counter: ErrNoOOMKillCounter, and the guard
// counts the kernel's kills another way (see internal/guard).
func (m *V1) OOMKills(rel string) (uint64, error) {
	if !kernel.HasOOMKillCounter(m.fs.Root) {
		return 0, ErrNoOOMKillCounter
	}
	c, err := m.OOMControl(rel)
	if err != nil {
		return 0, err
	}
	n, ok := c["oom_kill"]
	if !ok {
		return 0, ErrNoOOMKillCounter
	}
	return n, nil
}

// ErrNoOOMKillCounter means the kernel does not count OOM kills per
// cgroup (v1 before 4.13: memory.oom_control has only oom_kill_disable and
// under_oom).
var ErrNoOOMKillCounter = errors.New("no oom_kill counter in memory.oom_control (kernel before 4.13)")

// UnderOOM reads under_oom from memory.oom_control (every kernel): 1 while
// the cgroup is at its limit and the kernel's OOM handling for it is under
// way (or, with oom_kill_disable, its tasks wait).
func (m *V1) UnderOOM(rel string) (bool, error) {
	c, err := m.OOMControl(rel)
	return c["under_oom"] == 1, err
}

func (m *V1) OOMKillDisabled(rel string) (bool, error) {
	c, err := m.OOMControl(rel)
	if err != nil {
		return false, err
	}
	v, ok := c["oom_kill_disable"]
	if !ok {
		return false, fmt.Errorf("%s: no oom_kill_disable", m.fs.Path(rel, "memory.oom_control"))
	}
	return v == 1, nil
}

// SetOOMKillDisable writes oom_kill_disable. Kernels before 4.x refuse it
// (EINVAL) in a cgroup whose parent has use_hierarchy set or that has
// children of its own; the error says so.
func (m *V1) SetOOMKillDisable(rel string, disable bool) error {
	v := "0"
	if disable {
		v = "1"
	}
	return m.fs.WriteFile(rel, "memory.oom_control", v)
}

// OOMGroup is false: v1 has no memory.oom.group.
func (m *V1) OOMGroup(string) (bool, error) { return false, nil }

// OOMGroupKills: v1 kills no group.
func (m *V1) OOMGroupKills(string) (uint64, error) { return 0, ErrNoGroupKillCounter }

// ErrNoGroupKillCounter means the kernel does not count group kills (v1;
// v2 before 5.17: no oom_group_kill in memory.events.local).
var ErrNoGroupKillCounter = errors.New("no oom_group_kill counter in memory.events.local (cgroup v1, or a kernel before 5.17)")

// OOMControl parses memory.oom_control.
func (m *V1) OOMControl(rel string) (map[string]uint64, error) {
	f, err := m.fs.Open(rel, "memory.oom_control")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	c, err := ParseFlatKeyed(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	return c, nil
}

// Reclaim writes memory.force_empty, as the seed does: the kernel then
// reclaims until the cgroup is empty or reclaim stops making progress, and
// returns EINTR early if the writing thread gets a signal. v1 has no way to
// ask for a given amount, so bytes is ignored.
//
// Old kernels refuse: from 3.8 to 3.15 (so CentOS 7's 3.10)
// mem_cgroup_force_empty returns EBUSY for a cgroup that has tasks or
// children ("returns EBUSY if there is a task", mm/memcontrol.c), which is
// every cgroup the guard would reclaim from; every kernel answers EINVAL
// for the root cgroup. 3.16 dropped the task check (4.x reclaims a cgroup
// with tasks). A refusal is ErrNoReclaim: no reclaim here, not an error
// that holds anything up. It is kept per hierarchy once seen for a cgroup
// with tasks, so such a kernel is not asked again.
func (m *V1) Reclaim(rel string, _ uint64, budget time.Duration) error {
	if m.noForceEmpty.Load() {
		return ErrNoReclaim
	}
	write := m.fs.WriteBounded
	if m.writeBounded != nil {
		write = m.writeBounded
	}
	err := write(rel, "memory.force_empty", "0", budget)
	switch {
	case errors.Is(err, unix.EBUSY):
		if procs, perr := m.fs.Procs(rel, false); perr == nil && len(procs) > 0 {
			m.noForceEmpty.Store(true)
		}
		return fmt.Errorf("%s: the kernel refuses force_empty of a cgroup with tasks or children (%w): %w", m.fs.Path(rel, ""), err, ErrNoReclaim)
	case errors.Is(err, unix.EINVAL):
		return fmt.Errorf("%s: %w: %w", m.fs.Path(rel, ""), err, ErrNoReclaim)
	}
	return err
}

// ErrNoReclaim means the kernel does not reclaim on request from this
// cgroup (v1 force_empty refused): the guard carries on as if it had asked
// and nothing came back.
var ErrNoReclaim = errors.New("no reclaim on request here")

func (m *V1) SoftLimit(rel string) (uint64, error) {
	return m.fs.ReadUint(rel, "memory.soft_limit_in_bytes")
}

func (m *V1) SetSoftLimit(rel string, v uint64) error {
	s := fmt.Sprint(v)
	if v == Unlimited || v >= v1NoLimit {
		s = "-1"
	}
	return m.fs.WriteFile(rel, "memory.soft_limit_in_bytes", s)
}

// V2 is a cgroup v2 (unified) hierarchy with the memory controller.
type V2 struct{ fs *FS }

func (m *V2) Version() Version  { return VersionV2 }
func (m *V2) FS() *FS           { return m.fs }
func (m *V2) LimitFile() string { return "memory.max" }

// Limit reads memory.max. The root cgroup has no memory.max: no limit.
func (m *V2) Limit(rel string) (uint64, error) {
	v, err := m.fs.ReadUint(rel, "memory.max")
	if errors.Is(err, os.ErrNotExist) && m.fs.Exists(rel) {
		return Unlimited, nil
	}
	return v, err
}

func (m *V2) Usage(rel string) (uint64, error) { return m.fs.ReadUint(rel, "memory.current") }

func (m *V2) Stat(rel string) (Stat, error) {
	return readStat(m.fs, rel, "inactive_file", "active_file")
}

// OOMKills reads oom_kill from memory.events.local (5.2+): the kills of
// the cgroup's own processes, as v1 counts them. memory.events counts a
// kill in every ancestor of the victim too, so summing it over a sub-tree
// would count one kill once per level. On a kernel without the .local file
// the cgroup's own count is its hierarchical count less its children's.
func (m *V2) OOMKills(rel string) (uint64, error) {
	e, err := m.LocalEvents(rel)
	if err == nil {
		return e["oom_kill"], nil
	}
	if !errors.Is(err, os.ErrNotExist) || !m.fs.Exists(rel) {
		return 0, err
	}
	return m.ownKillsFromHierarchical(rel)
}

func (m *V2) ownKillsFromHierarchical(rel string) (uint64, error) {
	e, err := m.Events(rel)
	if err != nil {
		return 0, err
	}
	own := e["oom_kill"]
	kids, err := m.fs.Children(rel)
	if err != nil {
		return 0, err
	}
	for _, k := range kids {
		ke, err := m.Events(k)
		if err != nil {
			if IsNotExist(err) {
				continue
			}
			return 0, err
		}
		own -= min(own, ke["oom_kill"])
	}
	return own, nil
}

// OOMGroupKills reads oom_group_kill from memory.events.local (5.17+).
func (m *V2) OOMGroupKills(rel string) (uint64, error) {
	e, err := m.LocalEvents(rel)
	if errors.Is(err, os.ErrNotExist) && m.fs.Exists(rel) {
		return 0, ErrNoGroupKillCounter
	}
	if err != nil {
		return 0, err
	}
	n, ok := e["oom_group_kill"]
	if !ok {
		return 0, ErrNoGroupKillCounter
	}
	return n, nil
}

// OOMGroup reads memory.oom.group (4.19+); a kernel without it never
// kills a group.
func (m *V2) OOMGroup(rel string) (bool, error) {
	v, err := m.fs.ReadUint(rel, "memory.oom.group")
	if errors.Is(err, os.ErrNotExist) && m.fs.Exists(rel) {
		return false, nil
	}
	return v == 1, err
}

// Events parses memory.events: hierarchical counters (a descendant's
// events count in every ancestor).
func (m *V2) Events(rel string) (map[string]uint64, error) {
	return m.flatKeyed(rel, "memory.events")
}

// LocalEvents parses memory.events.local (5.2+): the cgroup's own events.
func (m *V2) LocalEvents(rel string) (map[string]uint64, error) {
	return m.flatKeyed(rel, "memory.events.local")
}

func (m *V2) flatKeyed(rel, file string) (map[string]uint64, error) {
	f, err := m.fs.Open(rel, file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	e, err := ParseFlatKeyed(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	return e, nil
}

// Reclaim writes memory.reclaim (5.19+), which reclaims at most bytes.
func (m *V2) Reclaim(rel string, bytes uint64, budget time.Duration) error {
	return m.fs.WriteBounded(rel, "memory.reclaim", fmt.Sprint(bytes), budget)
}

// ErrNoOOMHold means the hierarchy cannot make a task at its cgroup's
// limit wait for the guard instead of the kernel killing (v2).
var ErrNoOOMHold = errors.New("no oom_kill_disable (cgroup v2)")

func (m *V2) OOMKillDisabled(string) (bool, error) { return false, ErrNoOOMHold }
func (m *V2) SetOOMKillDisable(string, bool) error { return ErrNoOOMHold }
func (m *V2) UnderOOM(string) (bool, error)        { return false, ErrNoOOMHold }

func (m *V2) SoftLimit(rel string) (uint64, error) { return m.fs.ReadUint(rel, "memory.high") }

func (m *V2) SetSoftLimit(rel string, v uint64) error {
	s := fmt.Sprint(v)
	if v == Unlimited {
		s = "max"
	}
	return m.fs.WriteFile(rel, "memory.high", s)
}
