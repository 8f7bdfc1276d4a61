package kill

import (
	"bytes"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/cgroup"
)

// statField is field n (numbered from 1, as in proc(5)) of a
// /proc/PID/stat line, nil if it has fewer. The fields after comm are
// counted from its closing parenthesis (comm may hold spaces and
// parentheses). It allocates nothing: it runs right before a kill.
func statField(stat []byte, n int) []byte {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || n < 3 {
		return nil
	}
	f, start := 2, -1 // field 2 (comm) ends at i
	for j := i + 1; j <= len(stat); j++ {
		space := j == len(stat) || stat[j] == ' ' || stat[j] == '\n'
		switch {
		case !space && start < 0:
			start, f = j, f+1
		case space && start >= 0:
			if f == n {
				return stat[start:j]
			}
			start = -1
		}
	}
	return nil
}

// statUint is statField n as a number; ok false if absent or not one.
func statUint(stat []byte, n int) (v uint64, ok bool) {
	b := statField(stat, n)
	if len(b) == 0 {
		return 0, false
	}
	for _, d := range b {
		if d < '0' || d > '9' || v > (1<<63)/10 {
			return 0, false
		}
		v = v*10 + uint64(d-'0')
	}
	return v, true
}

// statDying tells from /proc/PID/stat as read whether a process is on its
// way out: state Z (zombie) or X, or PF_EXITING in the flags (field 9).
// With SIGKILL pending (statKillPending) it is dying too: the kernel's
// OOM killer picks no other victim for such a process's memory
// (task_will_free_mem), and the guard does not pick it again.
func statDying(stat []byte) bool {
	if st := statField(stat, 3); len(st) == 1 && (st[0] == 'Z' || st[0] == 'X') {
		return true
	}
	const pfExiting = 0x4
	flags, ok := statUint(stat, 9)
	return ok && flags&pfExiting != 0
}

// statKillPending tells from /proc/PID/stat whether SIGKILL is pending for
// the process's main thread (field 31, its private pending set, where a
// fatal signal sent to the process lands on every thread): what status's
// SigPnd says, without a read of status (tens of microseconds; stat and
// cgroup are a few each).
func statKillPending(stat []byte) bool {
	sig, ok := statUint(stat, 31)
	return ok && sig&(1<<(9-1)) != 0
}

// Exited tells whether c has exited: gone from /proc, its PID taken by
// another process, or a zombie. Its memory is freed by then (a zombie has
// released its address space). It is how the guard tells that a victim is
// gone where it has no pidfd to wait on.
func (p Proc) Exited(c Candidate) bool {
	var buf [1024]byte
	data, err := p.read(c.Pid, "stat", buf[:])
	if err != nil {
		return true
	}
	_, st, err := ParseStat(data)
	if err != nil || st != c.StartTime {
		return true
	}
	i := bytes.LastIndexByte(data, ')')
	f := strings.Fields(string(data[i+1:]))
	return len(f) == 0 || f[0] == "Z" || f[0] == "X"
}

// Now is what a chosen victim is at the moment of its kill.
type Now struct {
	Gone   bool   // exited, or its PID reused
	Dying  bool   // SIGKILL pending, exiting or a zombie (see dying)
	Inside bool   // its memory cgroup is under the killer's hierarchy root
	Cgroup string // that cgroup, relative to the root, when Inside
	RSSKB  uint64 // its resident set now (stat's field 24)
}

// place is what a Target keeps open to tell, at the kill, where its
// process is: its /proc/PID/stat and /proc/PID/cgroup, opened when the
// victim is chosen (ahead of need, at the early threshold), so that the
// check right before the signal is two preads. Opening and closing both
// there cost 60-100 us more on a process faulting in memory, measured with
// bench/preempt (respawn row, atKill p50 60-99 us before, see
// RESULTS-races.md). A descriptor of a /proc/PID file names that
// process's struct pid: once the process is reaped, reads through it fail
// (ESRCH), whoever has the number since.
type place struct {
	stat, cgroup int    // -1: not open (read by path instead)
	prefix       string // the hierarchy root as /proc/PID/cgroup names it
	prefixErr    error
	unified      bool
}

var pageSizeKB = unix.Getpagesize() / 1024

// noPlace is the place of a Target opened by Proc.Open alone: no cgroup
// to check against.
var noPlace = place{stat: -1, cgroup: -1, prefixErr: errors.New("victim opened without its cgroup's place")}

// openPlace opens t's place files, as well as it can: a file that cannot
// be opened (no fds left) is read by path at the recheck.
func (k Killer) openPlace(t *Target) {
	t.place = place{stat: -1, cgroup: -1, unified: k.Unified}
	t.place.prefix, t.place.prefixErr = hierarchyPath(k.Mem.Root, k.Unified)
	open := func(name string) int {
		var fd int
		var err error
		if t.procfd >= 0 {
			fd, err = unix.Openat(t.procfd, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		} else {
			fd, err = unix.Open(k.Proc.path(t.Pid, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		}
		if err != nil {
			return -1
		}
		return fd
	}
	t.place.stat, t.place.cgroup = open("stat"), open("cgroup")
}

func (pl *place) close() {
	for _, fd := range []*int{&pl.stat, &pl.cgroup} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}

// read reads one of t's place files: through the kept descriptor, else
// by path.
func (t *Target) readPlace(fd int, name string, buf []byte) ([]byte, error) {
	if fd < 0 {
		return t.proc.read(t.Pid, name, buf)
	}
	for {
		n, err := unix.Pread(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

// Recheck reads where t's process is now and whether it still runs, right
// before the signal, so that a victim chosen earlier that has moved out of
// the guarded cgroup, or died, is not signalled.
func (t *Target) Recheck() (Now, error) {
	var buf [4096]byte
	data, err := t.readPlace(t.place.stat, "stat", buf[:])
	if err != nil {
		return Now{Gone: true}, nil
	}
	if st, ok := statUint(data, 22); !ok || st != t.StartTime {
		return Now{Gone: true}, nil
	}
	now := Now{Dying: statDying(data) || statKillPending(data)}
	if pages, ok := statUint(data, 24); ok {
		now.RSSKB = pages * uint64(pageSizeKB)
	}
	if data, err = t.readPlace(t.place.cgroup, "cgroup", buf[:]); err != nil {
		return Now{Gone: true}, nil
	}
	p, ok := memoryCgroup(data, t.place.unified)
	if !ok {
		return now, fmt.Errorf("pid %d: no memory cgroup in /proc/%d/cgroup", t.Pid, t.Pid)
	}
	if bytes.Contains(p, []byte("/..")) {
		// Outside this process's cgroup namespace: no path to compare.
		return now, fmt.Errorf("pid %d: memory cgroup %s is outside the guard's cgroup namespace", t.Pid, p)
	}
	if t.place.prefixErr != nil {
		return now, t.place.prefixErr
	}
	now.Inside, now.Cgroup = below(string(p), t.place.prefix)
	return now, nil
}

// memoryCgroup is the memory controller's path in /proc/PID/cgroup: on
// v1 the line "N:...,memory,...:/path", on v2 "0::/path". It points into
// data (no allocation: it runs right before a kill).
func memoryCgroup(data []byte, unified bool) ([]byte, bool) {
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		id, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		ctrls, p, ok := bytes.Cut(rest, []byte(":"))
		if !ok {
			continue
		}
		if unified && len(id) == 1 && id[0] == '0' && len(ctrls) == 0 {
			return p, true
		}
		if !unified && hasController(ctrls, "memory") {
			return p, true
		}
	}
	return nil, false
}

// hasController tells whether the comma-separated list ctrls names c.
func hasController(ctrls []byte, c string) bool {
	for len(ctrls) > 0 {
		name := ctrls
		if i := bytes.IndexByte(ctrls, ','); i >= 0 {
			name, ctrls = ctrls[:i], ctrls[i+1:]
		} else {
			ctrls = nil
		}
		if string(name) == c {
			return true
		}
	}
	return false
}

// below tells whether cgroup path p (as /proc/PID/cgroup names it) is
// prefix or under it, and its path relative to prefix.
func below(p, prefix string) (bool, string) {
	switch {
	case p == prefix:
		return true, "/"
	case prefix == "/":
		return true, p
	case strings.HasPrefix(p, prefix) && len(p) > len(prefix) && p[len(prefix)] == '/':
		return true, p[len(prefix):]
	}
	return false, ""
}

var hierarchyPaths sync.Map // root -> string

// hierarchyPath is root (a directory of a mounted memory hierarchy) as
// /proc/PID/cgroup names it: the mount's own root joined with root's path
// below the mount point.
func hierarchyPath(root string, unified bool) (string, error) {
	if v, ok := hierarchyPaths.Load(root); ok {
		return v.(string), nil
	}
	mounts, err := cgroup.Mounts()
	if err != nil {
		return "", err
	}
	best := -1
	for i, m := range mounts {
		if unified != (m.FSType == "cgroup2") || !unified && !hasString(m.Options, "memory") {
			continue
		}
		if (root == m.Point || strings.HasPrefix(root, strings.TrimSuffix(m.Point, "/")+"/")) && (best < 0 || len(m.Point) > len(mounts[best].Point)) {
			best = i
		}
	}
	if best < 0 {
		return "", fmt.Errorf("%s is in no mounted memory hierarchy", root)
	}
	m := mounts[best]
	p := path.Join("/", m.Root, strings.TrimPrefix(root, m.Point))
	hierarchyPaths.Store(root, p)
	return p, nil
}

func hasString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// CgroupOf is the memory cgroup of process pid relative to the memory
// hierarchy at root (inside false when it is not under root), read from
// /proc/PID/cgroup.
func CgroupOf(pid int, root string, unified bool) (inside bool, rel string, err error) {
	data, err := Proc{}.read(pid, "cgroup", make([]byte, 4096))
	if err != nil {
		return false, "", err
	}
	p, ok := memoryCgroup(data, unified)
	switch {
	case !ok:
		return false, "", fmt.Errorf("no memory cgroup in /proc/%d/cgroup", pid)
	case bytes.Contains(p, []byte("/..")):
		return false, "", fmt.Errorf("memory cgroup %s of pid %d is outside this cgroup namespace", p, pid)
	}
	prefix, err := hierarchyPath(root, unified)
	if err != nil {
		return false, "", err
	}
	inside, rel = below(string(p), prefix)
	return inside, rel, nil
}
