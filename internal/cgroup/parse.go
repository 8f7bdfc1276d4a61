package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Unlimited is how a limit of "max" (v2) or PAGE_COUNTER_MAX (v1) reads.
const Unlimited = ^uint64(0)

// v1 reports "no limit" as PAGE_COUNTER_MAX pages in bytes, a number that
// depends on the page size; anything this large is no limit.
const v1NoLimit = uint64(1) << 62

// ParseUint parses a cgroup file that holds one number, or "max".
func ParseUint(r io.Reader) (uint64, error) {
	data, err := io.ReadAll(io.LimitReader(r, 64))
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(data))
	if s == "max" {
		return Unlimited, nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("not a number: %q", s)
	}
	return v, nil
}

// ParseFlatKeyed parses "key value" lines (memory.stat, memory.oom_control,
// memory.events). A malformed line is an error that names it; duplicate
// keys keep the last value.
func ParseFlatKeyed(r io.Reader) (map[string]uint64, error) {
	m := make(map[string]uint64)
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		key, val, ok := strings.Cut(line, " ")
		if !ok {
			return m, fmt.Errorf("line %d: %q: want \"key value\"", n, line)
		}
		v, err := strconv.ParseUint(strings.TrimSpace(val), 10, 64)
		if err != nil {
			return m, fmt.Errorf("line %d: %q: %w", n, line, errors.Unwrap(err))
		}
		m[key] = v
	}
	return m, sc.Err()
}

// ParsePids parses cgroup.procs or tasks: one pid a line.
func ParsePids(r io.Reader) ([]int, error) {
	var pids []int
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		pid, err := strconv.Atoi(line)
		if err != nil || pid <= 0 {
			return pids, fmt.Errorf("not a pid: %q", line)
		}
		pids = append(pids, pid)
	}
	return pids, sc.Err()
}
