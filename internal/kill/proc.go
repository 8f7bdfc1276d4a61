// Package kill chooses and kills victims: one process (the highest
// oom_score, as the kernel would) or every process of a cgroup (frozen first
// so nothing forks away). Signals go through pidfds, so a PID reused between
// choosing and killing can never hit the wrong process.
package kill

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Proc reads /proc (Root is injectable for tests on recorded trees).
type Proc struct{ Root string }

// Candidate is a process that could be killed, as /proc described it.
type Candidate struct {
	Pid         int
	Comm        string
	StartTime   uint64 // clock ticks after boot; with Pid, names the process uniquely
	OOMScore    int
	OOMScoreAdj int
	Status      Status
	Cgroup      string // the cgroup (relative path) the process was found in
}

// Status is what /proc/PID/status tells of a process's memory.
type Status struct {
	RssAnonKB, RssFileKB, RssShmemKB, VmSizeKB uint64
}

func (p Proc) path(pid int, file string) string {
	root := p.Root
	if root == "" {
		root = "/proc"
	}
	return filepath.Join(root, strconv.Itoa(pid), file)
}

// Inspect reads what victim choice needs of one process.
func (p Proc) Inspect(pid int) (Candidate, error) {
	c := Candidate{Pid: pid}
	data, err := os.ReadFile(p.path(pid, "stat"))
	if err != nil {
		return c, err
	}
	if c.Comm, c.StartTime, err = ParseStat(data); err != nil {
		return c, fmt.Errorf("%s: %w", p.path(pid, "stat"), err)
	}
	if c.OOMScore, err = p.readInt(pid, "oom_score"); err != nil {
		return c, err
	}
	if c.OOMScoreAdj, err = p.readInt(pid, "oom_score_adj"); err != nil {
		return c, err
	}
	f, err := os.Open(p.path(pid, "status"))
	if err != nil {
		return c, err
	}
	defer f.Close()
	if c.Status, err = ParseStatus(f); err != nil {
		return c, fmt.Errorf("%s: %w", f.Name(), err)
	}
	return c, nil
}

// StartTime re-reads a process's start time, to tell it from a later
// process that was given the same PID.
func (p Proc) StartTime(pid int) (uint64, error) {
	data, err := os.ReadFile(p.path(pid, "stat"))
	if err != nil {
		return 0, err
	}
	_, st, err := ParseStat(data)
	return st, err
}

func (p Proc) readInt(pid int, file string) (int, error) {
	data, err := os.ReadFile(p.path(pid, file))
	if err != nil {
		return 0, err
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", p.path(pid, file), err)
	}
	return v, nil
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
