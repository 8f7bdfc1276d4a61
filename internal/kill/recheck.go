package kill

import (
	"bytes"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/cgroup"
)

// statDying tells from /proc/PID/stat as read whether a process is on its
// way out: state Z (zombie) or X, or PF_EXITING in the flags. With SIGKILL
// pending (killPending, from status) it is dying too: the kernel's OOM
// killer picks no other victim for such a process's memory
// (task_will_free_mem), and the guard does not pick it again.
func statDying(stat []byte) bool {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return false
	}
	fields := strings.Fields(string(stat[i+1:]))
	const stateIndex, flagsIndex = 3 - 3, 9 - 3
	if len(fields) <= flagsIndex {
		return false
	}
	if fields[stateIndex] == "Z" || fields[stateIndex] == "X" {
		return true
	}
	const pfExiting = 0x4
	flags, err := strconv.ParseUint(fields[flagsIndex], 10, 64)
	return err == nil && flags&pfExiting != 0
}

// statKillPending tells from /proc/PID/stat whether SIGKILL is pending for
// the process's main thread (field 31, its private pending set, where a
// fatal signal sent to the process lands on every thread): what status's
// SigPnd says, without a read of status (tens of microseconds; stat and
// cgroup are a few each).
func statKillPending(stat []byte) bool {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return false
	}
	fields := strings.Fields(string(stat[i+1:]))
	const signalIndex = 31 - 3
	if len(fields) <= signalIndex {
		return false
	}
	sig, err := strconv.ParseUint(fields[signalIndex], 10, 64)
	return err == nil && sig&(1<<(9-1)) != 0
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

// ExitFd returns a pidfd of c, readable (poll, epoll) once c has exited;
// the caller closes it. ErrGone: c has exited already, or its PID names
// another process.
func (p Proc) ExitFd(c Candidate) (int, error) {
	fd, err := unix.PidfdOpen(c.Pid, 0)
	if err == unix.ESRCH {
		return -1, fmt.Errorf("pid %d (%s): %w", c.Pid, c.Comm, ErrGone)
	}
	if err != nil {
		return -1, fmt.Errorf("pidfd_open %d (%s): %w", c.Pid, c.Comm, err)
	}
	if p.Exited(c) {
		unix.Close(fd)
		return -1, fmt.Errorf("pid %d (%s): %w", c.Pid, c.Comm, ErrGone)
	}
	return fd, nil
}

// Now is what a chosen victim is at the moment of its kill.
type Now struct {
	Gone   bool   // exited, or its PID reused
	Dying  bool   // SIGKILL pending, exiting or a zombie (see dying)
	Inside bool   // its memory cgroup is under the killer's hierarchy root
	Cgroup string // that cgroup, relative to the root, when Inside
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
	_, st, err := ParseStat(data)
	if err != nil || st != t.StartTime {
		return Now{Gone: true}, nil
	}
	now := Now{Dying: statDying(data) || statKillPending(data)}
	if data, err = t.readPlace(t.place.cgroup, "cgroup", buf[:]); err != nil {
		return Now{Gone: true}, nil
	}
	p, ok := memoryCgroup(data, t.place.unified)
	if !ok {
		return now, fmt.Errorf("pid %d: no memory cgroup in /proc/%d/cgroup", t.Pid, t.Pid)
	}
	if strings.Contains(p, "/..") {
		// Outside this process's cgroup namespace: no path to compare.
		return now, fmt.Errorf("pid %d: memory cgroup %s is outside the guard's cgroup namespace", t.Pid, p)
	}
	if t.place.prefixErr != nil {
		return now, t.place.prefixErr
	}
	prefix := t.place.prefix
	switch {
	case p == prefix:
		now.Inside, now.Cgroup = true, "/"
	case prefix == "/":
		now.Inside, now.Cgroup = true, p
	case strings.HasPrefix(p, prefix+"/"):
		now.Inside, now.Cgroup = true, p[len(prefix):]
	}
	return now, nil
}

// memoryCgroup is the memory controller's line of /proc/PID/cgroup: on v1
// "N:...,memory,...:/path", on v2 "0::/path".
func memoryCgroup(data []byte, unified bool) (string, bool) {
	for _, line := range strings.Split(string(data), "\n") {
		id, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		ctrls, p, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		if unified && id == "0" && ctrls == "" {
			return p, true
		}
		if !unified {
			for _, c := range strings.Split(ctrls, ",") {
				if c == "memory" {
					return p, true
				}
			}
		}
	}
	return "", false
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
