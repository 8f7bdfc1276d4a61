package cgroup

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Mount is one line of /proc/self/mountinfo that mounts a cgroup file system.
type Mount struct {
	Point   string   // where it is mounted
	Root    string   // which directory of the hierarchy is mounted there
	FSType  string   // cgroup or cgroup2
	Options []string // super options: the v1 controllers, e.g. "memory"
}

// ParseMountInfo returns the cgroup mounts listed in a mountinfo file.
// Lines that are not cgroup mounts are skipped; malformed lines are errors.
func ParseMountInfo(r io.Reader) ([]Mount, error) {
	var mounts []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		// "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			return mounts, fmt.Errorf("mountinfo line %d: no separator: %q", n, line)
		}
		pf, sf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(sf) < 3 {
			return mounts, fmt.Errorf("mountinfo line %d: too few fields: %q", n, line)
		}
		if sf[0] != "cgroup" && sf[0] != "cgroup2" {
			continue
		}
		mounts = append(mounts, Mount{
			Point: unescapeMount(pf[4]), Root: unescapeMount(pf[3]),
			FSType: sf[0], Options: strings.Split(sf[2], ","),
		})
	}
	return mounts, sc.Err()
}

// unescapeMount undoes the kernel's octal escapes of space, tab, newline and backslash.
func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

func (m Mount) hasOption(o string) bool {
	for _, x := range m.Options {
		if x == o {
			return true
		}
	}
	return false
}

func readMounts() ([]Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseMountInfo(f)
}

// DefaultMemoryRoot is where this host's memory controller is mounted: the
// v1 memory hierarchy if there is one (v1 and hybrid hosts), else the
// cgroup2 mount (unified hosts).
func DefaultMemoryRoot() (string, error) {
	mounts, err := readMounts()
	if err != nil {
		return "", err
	}
	return defaultMemoryRoot(mounts, func(point string) ([]byte, error) {
		return os.ReadFile(filepath.Join(point, "cgroup.controllers"))
	})
}

// defaultMemoryRoot picks the v1 memory mount (v1 and hybrid hosts), else
// the cgroup2 mount whose cgroup.controllers (read by controllers) lists
// memory (unified hosts; a hybrid host's cgroup2 mount has none).
func defaultMemoryRoot(mounts []Mount, controllers func(point string) ([]byte, error)) (string, error) {
	for _, m := range mounts {
		if m.FSType == "cgroup" && m.hasOption("memory") {
			return m.Point, nil
		}
	}
	for _, m := range mounts {
		if m.FSType == "cgroup2" {
			if data, err := controllers(m.Point); err == nil && hasWord(string(data), "memory") {
				return m.Point, nil
			}
		}
	}
	return "", fmt.Errorf("no mounted memory cgroup controller")
}

// V1Sibling returns the v1 hierarchy of another controller (e.g. "freezer")
// at the same relative place as dir, a directory in the v1 memory hierarchy:
// v1 runtimes create the same cgroup path in every controller.
func V1Sibling(dir, controller string) (*FS, error) {
	mounts, err := readMounts()
	if err != nil {
		return nil, err
	}
	return v1Sibling(mounts, dir, controller)
}

func v1Sibling(mounts []Mount, dir, controller string) (*FS, error) {
	var mem, other *Mount
	for i := range mounts {
		m := &mounts[i]
		if m.FSType != "cgroup" {
			continue
		}
		if m.hasOption("memory") && (dir == m.Point || strings.HasPrefix(dir, m.Point+"/")) {
			mem = m
		}
		if m.hasOption(controller) && other == nil {
			other = m
		}
	}
	if mem == nil {
		return nil, fmt.Errorf("%s is not in a v1 memory hierarchy", dir)
	}
	if other == nil {
		return nil, fmt.Errorf("no v1 %s hierarchy mounted", controller)
	}
	sub := strings.TrimPrefix(dir, mem.Point)
	return &FS{Root: filepath.Join(other.Point, sub)}, nil
}

// Mounts lists this process's cgroup mounts (/proc/self/mountinfo).
func Mounts() ([]Mount, error) { return readMounts() }
