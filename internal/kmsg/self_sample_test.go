package kmsg

// What testdata/self-linux-6.18-cgroup-v1.kmsg holds: the kill of the hog
// TestRealKernelOOM ran when the file was captured.
const (
	selfPid    = 22018
	selfCgroup = "/oomguard-test-TestRealKernelOOM-22011-417404/victim"
	selfAnon   = 33664
)
