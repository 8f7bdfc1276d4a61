package cgroup

import (
	"os"
	"testing"
)

// testdata/mountinfo-hybrid is the cgroup part of this machine's own
// /proc/self/mountinfo: a hybrid host, memory on v1.
func TestParseMountInfo(t *testing.T) {
	f, err := os.Open("testdata/mountinfo-hybrid")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mounts, err := ParseMountInfo(f)
	if err != nil {
		t.Fatal(err)
	}
	root, err := defaultMemoryRoot(mounts, noControllers)
	if err != nil || root != "/sys/fs/cgroup/memory" {
		t.Fatalf("default root %q, %v", root, err)
	}
	fz, err := v1Sibling(mounts, "/sys/fs/cgroup/memory/kubepods/burstable", "freezer")
	if err != nil || fz.Root != "/sys/fs/cgroup/freezer/kubepods/burstable" {
		t.Fatalf("freezer sibling %+v, %v", fz, err)
	}
	if _, err := v1Sibling(mounts, "/tmp", "freezer"); err == nil {
		t.Fatal("a non-cgroup dir got a sibling")
	}
}

func noControllers(string) ([]byte, error) { return nil, os.ErrNotExist }

// Which mount --root defaults to, on the real mountinfo of a hybrid host
// (this machine) and of a unified one (the VM, testdata/v2), with the
// cgroup.controllers each host's cgroup2 mount really has.
func TestDefaultMemoryRoot(t *testing.T) {
	v2Controllers, err := os.ReadFile("testdata/v2/cgroup.controllers")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, mountinfo string
		controllers     []byte // of the cgroup2 mount
		want            string // "": an error
	}{
		{"hybrid: v1 memory wins over cgroup2", "testdata/mountinfo-hybrid", v2Controllers, "/sys/fs/cgroup/memory"},
		{"unified", "testdata/v2/mountinfo-unified", v2Controllers, "/sys/fs/cgroup"},
		{"unified without the memory controller", "testdata/v2/mountinfo-unified", []byte("cpuset cpu io pids\n"), ""},
	} {
		f, err := os.Open(tc.mountinfo)
		if err != nil {
			t.Fatal(err)
		}
		mounts, err := ParseMountInfo(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", tc.mountinfo, err)
		}
		got, err := defaultMemoryRoot(mounts, func(string) ([]byte, error) { return tc.controllers, nil })
		if got != tc.want || (err != nil) != (tc.want == "") {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestParseMountInfoGarbage(t *testing.T) {
	for _, in := range []string{"garbage\n", "1 2 3 - cgroup\n"} {
		if _, err := ParseMountInfo(stringsReader(in)); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}
