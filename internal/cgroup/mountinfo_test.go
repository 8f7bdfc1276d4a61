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
	root, err := defaultMemoryRoot(mounts)
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

func TestParseMountInfoGarbage(t *testing.T) {
	for _, in := range []string{"garbage\n", "1 2 3 - cgroup\n"} {
		if _, err := ParseMountInfo(stringsReader(in)); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}
