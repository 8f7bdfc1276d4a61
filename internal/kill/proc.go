// Package kill chooses and kills victims: one process (the highest
// oom_score, as the kernel would) or every process of a cgroup (frozen first
// so nothing forks away). Signals go through pidfds where the kernel has
// them (5.3+), so a PID reused between choosing and killing can never hit
// the wrong process; before, through kill(2) right after the victim's start
// time is checked again (see Target).
package kill

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/kernel"
)

// Proc reads /proc (Root is injectable for tests on recorded trees).
type Proc struct{ Root string }

// Candidate is a process that could be killed, as /proc described it.
type Candidate struct {
	Pid         int
	Comm        string
	StartTime   uint64 // clock ticks after boot; with Pid, names the process uniquely
	OOMScoreAdj int
	// OOMScore is the kernel's badness of the process within its cgroup, in
	// thousandths of the cgroup's limit: what /proc/PID/oom_score says, but
	// scaled to the cgroup instead of the host (see Score).
	OOMScore int
	Status   Status
	Cgroup   string // the cgroup (relative path) the process was found in
	// CPU is the CPU it last ran on (/proc/PID/stat field 39, "processor");
	// -1 if the kernel did not say.
	CPU int
	// Policy is its scheduling policy (field 41): unix.SCHED_OTHER,
	// SCHED_FIFO and so on.
	Policy int
	// Threads is how many threads it has (field 20); CPU is the first's.
	Threads int
	// Dying: killed (SIGKILL pending, exiting of it, exit code SIGKILL),
	// exiting or a zombie when inspected. It is never chosen (Choose):
	// its memory is on its way back already.
	Dying bool
}

// RealTime tells whether c runs under a real-time policy (SCHED_FIFO, RR or
// DEADLINE), which a wake-up of the guard's loop does not preempt.
func (c Candidate) RealTime() bool {
	return c.Policy == unix.SCHED_FIFO || c.Policy == unix.SCHED_RR || c.Policy == unix.SCHED_DEADLINE
}

// Process is c as an event names it; cgroup is the absolute path of c's
// cgroup.
func (c Candidate) Process(cgroup string) event.Process {
	return event.Process{
		Pid: c.Pid, Comm: c.Comm, OOMScore: c.OOMScore, Cgroup: cgroup, PidInNS: c.Status.PidInNS,
		AnonRSSKB: c.Status.RssAnonKB, FileRSSKB: c.Status.RssFileKB, ShmemRSSKB: c.Status.RssShmemKB, TotalVMKB: c.Status.VmSizeKB,
	}
}

// Status is what /proc/PID/status tells of a process's memory.
type Status struct {
	RssAnonKB, RssFileKB, RssShmemKB, VmSizeKB, VmSwapKB, VmPTEKB uint64
	// VmRSSKB is the whole resident set: RssAnon + RssFile + RssShmem
	// where the kernel splits it (4.5+), the only figure before.
	VmRSSKB uint64
	// PidInNS is the process's pid in its innermost pid namespace (the last
	// NSpid field): 1 for a container's init. 0 where the kernel does not say.
	PidInNS int
}

// Score ranks a process as the kernel's cgroup OOM killer does
// (oom_badness with the cgroup's limit as the total): resident memory, swap
// and page tables, plus oom_score_adj thousandths of the limit. Scaled to
// thousandths of the limit it is the cgroup's own oom_score.
func Score(s Status, adj int, limitKB uint64) int {
	if limitKB == 0 {
		return 0
	}
	points := int64(s.RSSKB() + s.VmSwapKB + s.VmPTEKB)
	points += int64(adj) * int64(limitKB) / 1000
	return int(points * 1000 / int64(limitKB))
}

// RSSKB is the resident set: the sum of its parts where the kernel gives
// them (4.5+), else VmRSS (3.10 to 4.4 have no RssAnon, RssFile, RssShmem).
func (s Status) RSSKB() uint64 {
	if parts := s.RssAnonKB + s.RssFileKB + s.RssShmemKB; parts > 0 || s.VmRSSKB == 0 {
		return parts
	}
	return s.VmRSSKB
}

func (p Proc) path(pid int, file string) string {
	root := p.Root
	if root == "" {
		root = "/proc"
	}
	return root + "/" + strconv.Itoa(pid) + "/" + file
}

// read reads a small /proc file in as few syscalls as it can: open, one
// read into buf, close.
func (p Proc) read(pid int, file string, buf []byte) ([]byte, error) {
	name := p.path(pid, file)
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	defer unix.Close(fd)
	n := 0
	for n < len(buf) {
		k, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: name, Err: err}
		}
		if k == 0 {
			break
		}
		n += k
	}
	return buf[:n], nil
}

// Inspect reads what victim choice needs of one process; limitKB is the
// cgroup's limit the score is scaled to.
func (p Proc) Inspect(pid int, limitKB uint64) (Candidate, error) {
	c := Candidate{Pid: pid}
	var buf [4096]byte
	data, err := p.read(pid, "stat", buf[:])
	if err != nil {
		return c, err
	}
	if c.Comm, c.StartTime, err = ParseStat(data); err != nil {
		return c, fmt.Errorf("%s: %w", p.path(pid, "stat"), err)
	}
	c.Dying = statDying(data) || killedExiting(data)
	c.CPU = -1
	if cpu, ok := statUint(data, 39); ok && cpu < 1<<20 {
		c.CPU = int(cpu)
	}
	if policy, ok := statUint(data, 41); ok && policy < 1<<10 {
		c.Policy = int(policy)
	}
	if threads, ok := statUint(data, 20); ok && threads < 1<<30 {
		c.Threads = int(threads)
	}
	if data, err = p.read(pid, "oom_score_adj", buf[:]); err != nil {
		return c, err
	}
	if c.OOMScoreAdj, err = strconv.Atoi(strings.TrimSpace(string(data))); err != nil {
		return c, fmt.Errorf("%s: %w", p.path(pid, "oom_score_adj"), err)
	}
	if data, err = p.read(pid, "status", buf[:]); err != nil {
		return c, err
	}
	if c.Status, err = ParseStatus(bytes.NewReader(data)); err != nil {
		return c, fmt.Errorf("%s: %w", p.path(pid, "status"), err)
	}
	c.Dying = c.Dying || killPending(data)
	if !kernel.HasNSpid() {
		c.Status.PidInNS = 0 // test-only: as a kernel before 4.1, which has no NSpid line
	}
	c.OOMScore = Score(c.Status, c.OOMScoreAdj, limitKB)
	return c, nil
}

// StartTime re-reads a process's start time, to tell it from a later
// process that was given the same PID.
func (p Proc) StartTime(pid int) (uint64, error) {
	var buf [1024]byte
	data, err := p.read(pid, "stat", buf[:])
	if err != nil {
		return 0, err
	}
	_, st, err := ParseStat(data)
	return st, err
}

// Alive tells whether the process c describes still runs and is not on its
// way out: same PID and start time, not a zombie (a killed process stays one
// until its parent reaps it), not exiting (PF_EXITING), no SIGKILL pending.
// A victim of the kernel's OOM killer passes through all three.
func (p Proc) Alive(c Candidate) bool {
	var buf [4096]byte
	data, err := p.read(c.Pid, "stat", buf[:])
	if err != nil {
		return false
	}
	_, st, err := ParseStat(data)
	if err != nil || st != c.StartTime {
		return false
	}
	fields := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	const stateIndex, flagsIndex = 3 - 3, 9 - 3
	if len(fields) <= flagsIndex || fields[stateIndex] == "Z" || fields[stateIndex] == "X" {
		return false
	}
	const pfExiting = 0x4
	if flags, err := strconv.ParseUint(fields[flagsIndex], 10, 64); err != nil || flags&pfExiting != 0 {
		return false
	}
	if data, err = p.read(c.Pid, "status", buf[:]); err != nil {
		return false
	}
	return !killPending(data)
}

// killedExiting tells whether /proc/PID/stat shows the process on its
// way out of SIGKILL: its exit_code (field 52, 3.5+), set when it starts
// to exit, names that signal. A process exiting of its own accord does not
// count: its memory is coming back too, but the guard does not wait for it.
func killedExiting(stat []byte) bool {
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	const exitCodeIndex = 52 - 3
	if len(fields) <= exitCodeIndex {
		return false
	}
	code, err := strconv.ParseUint(fields[exitCodeIndex], 10, 64)
	return err == nil && code != 0 && code&0x7f == uint64(unix.SIGKILL)
}

// killPending tells whether /proc/PID/status shows SIGKILL pending, for the
// thread (SigPnd) or the process (ShdPnd).
func killPending(status []byte) bool {
	const sigkillBit = 1 << (9 - 1)
	for _, line := range strings.Split(string(status), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok || key != "SigPnd" && key != "ShdPnd" {
			continue
		}
		if mask, err := strconv.ParseUint(strings.TrimSpace(val), 16, 64); err == nil && mask&sigkillBit != 0 {
			return true
		}
	}
	return false
}

// ParseStat extracts comm and starttime (field 22) from /proc/PID/stat. The
// comm is whatever lies between the first "(" and the last ")": it may itself
// contain spaces and parentheses.
func ParseStat(data []byte) (comm string, startTime uint64, err error) {
	open := bytes.IndexByte(data, '(')
	close := bytes.LastIndexByte(data, ')')
	if open < 0 || close < open {
		return "", 0, fmt.Errorf("no (comm) in stat %q", truncate(data))
	}
	comm = string(data[open+1 : close])
	// After ") " come fields 3 (state) onwards; starttime is field 22.
	fields := strings.Fields(string(data[close+1:]))
	const startTimeIndex = 22 - 3
	if len(fields) <= startTimeIndex {
		return comm, 0, fmt.Errorf("stat has %d fields after comm, want > %d", len(fields), startTimeIndex)
	}
	startTime, err = strconv.ParseUint(fields[startTimeIndex], 10, 64)
	if err != nil {
		return comm, 0, fmt.Errorf("stat starttime %q: %w", fields[startTimeIndex], err)
	}
	return comm, startTime, nil
}

// ParseStatus reads the memory lines of /proc/PID/status. Missing lines
// (kernel threads, zombies) read as zero.
func ParseStatus(r io.Reader) (Status, error) {
	var s Status
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		if key == "NSpid" {
			if f := strings.Fields(val); len(f) > 0 {
				if v, err := strconv.Atoi(f[len(f)-1]); err == nil && v > 0 {
					s.PidInNS = v
				}
			}
			continue
		}
		var dst *uint64
		switch key {
		case "RssAnon":
			dst = &s.RssAnonKB
		case "RssFile":
			dst = &s.RssFileKB
		case "RssShmem":
			dst = &s.RssShmemKB
		case "VmSize":
			dst = &s.VmSizeKB
		case "VmRSS":
			dst = &s.VmRSSKB
		case "VmSwap":
			dst = &s.VmSwapKB
		case "VmPTE":
			dst = &s.VmPTEKB
		default:
			continue
		}
		num := strings.TrimSuffix(strings.TrimSpace(val), " kB")
		v, err := strconv.ParseUint(strings.TrimSpace(num), 10, 64)
		if err != nil {
			return s, fmt.Errorf("status %s: %q: %w", key, val, err)
		}
		*dst = v
	}
	return s, sc.Err()
}

func truncate(b []byte) []byte {
	if len(b) > 80 {
		return b[:80]
	}
	return b
}

// Fate is what became of a process seen earlier.
type Fate int

const (
	// Running: same process, not on its way out.
	Running Fate = iota
	// Killed: dying or dead of SIGKILL (its exit code says so, or SIGKILL
	// is pending).
	Killed
	// Exited: dying or dead of something else (exit, another signal).
	Exited
	// Vanished: reaped, no trace left (or its PID names another process).
	Vanished
)

// FateOf tells what became of c, from /proc/PID/stat's state, flags and
// exit_code (field 52, 3.5+: the status a dying or zombie task will be
// reaped with; its low 7 bits the killing signal) and status's pending
// signals. It is how kernel OOM kills are told from exits on a kernel
// without the oom_kill counter (before 4.13): the OOM killer's victim dies
// of SIGKILL.
func (p Proc) FateOf(c Candidate) Fate {
	var buf [4096]byte
	data, err := p.read(c.Pid, "stat", buf[:])
	if err != nil {
		return Vanished
	}
	_, st, err := ParseStat(data)
	if err != nil || st != c.StartTime {
		return Vanished
	}
	fields := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	const stateIndex, flagsIndex, exitCodeIndex = 3 - 3, 9 - 3, 52 - 3
	if len(fields) <= flagsIndex {
		return Vanished
	}
	if len(fields) > exitCodeIndex {
		if code, err := strconv.ParseUint(fields[exitCodeIndex], 10, 64); err == nil && code != 0 {
			if code&0x7f == uint64(unix.SIGKILL) {
				return Killed
			}
			return Exited
		}
	}
	if sdata, err := p.read(c.Pid, "status", buf[:]); err == nil && killPending(sdata) {
		return Killed
	}
	if fields[stateIndex] == "Z" || fields[stateIndex] == "X" {
		return Exited // exit status 0
	}
	const pfExiting = 0x4
	if flags, err := strconv.ParseUint(fields[flagsIndex], 10, 64); err == nil && flags&pfExiting != 0 {
		return Exited
	}
	return Running
}
