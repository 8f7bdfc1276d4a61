package kill

import (
	"bytes"
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

// Recheck reads where c is now and whether it still runs: /proc/PID/stat
// and /proc/PID/cgroup, two small reads (a few microseconds each) made right
// before the signal, so that a victim chosen earlier that has moved out of
// the guarded cgroup, or died, is not signalled.
func (k Killer) Recheck(c Candidate) (Now, error) {
	var buf [4096]byte
	data, err := k.Proc.read(c.Pid, "stat", buf[:])
	if err != nil {
		return Now{Gone: true}, nil
	}
	_, st, err := ParseStat(data)
	if err != nil || st != c.StartTime {
		return Now{Gone: true}, nil
	}
	now := Now{Dying: statDying(data) || statKillPending(data)}
	if data, err = k.Proc.read(c.Pid, "cgroup", buf[:]); err != nil {
		return Now{Gone: true}, nil
	}
	p, ok := memoryCgroup(data, k.Unified)
	if !ok {
		return now, fmt.Errorf("pid %d: no memory cgroup in /proc/%d/cgroup", c.Pid, c.Pid)
	}
	if strings.Contains(p, "/..") {
		// Outside this process's cgroup namespace: no path to compare.
		return now, fmt.Errorf("pid %d: memory cgroup %s is outside the guard's cgroup namespace", c.Pid, p)
	}
	prefix, err := hierarchyPath(k.Mem.Root, k.Unified)
	if err != nil {
		return now, err
	}
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
