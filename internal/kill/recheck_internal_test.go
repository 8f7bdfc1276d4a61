package kill

import "testing"

// The kill path's parsers of /proc/PID/stat and /proc/PID/cgroup, on lines
// as the kernel writes them (a comm with spaces and parentheses; a v1 list
// of every hierarchy; a v2 line).
func TestRecheckParsers(t *testing.T) {
	// A sleeping process, SIGKILL pending (signal 256), from a 6.18 kernel,
	// with a comm that holds ") (".
	const stat = "4242 (a) (b c) S 1 4242 4242 0 -1 4194560 120 0 0 0 0 0 0 0 20 0 1 0 987654 2236416 190 18446744073709551615 1 1 0 0 0 256 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
	for _, tc := range []struct {
		n    int
		want string
	}{{3, "S"}, {4, "1"}, {9, "4194560"}, {22, "987654"}, {31, "256"}, {52, "0"}, {53, ""}, {2, ""}} {
		if got := string(statField([]byte(stat), tc.n)); got != tc.want {
			t.Errorf("field %d: %q, want %q", tc.n, got, tc.want)
		}
	}
	if st, ok := statUint([]byte(stat), 22); !ok || st != 987654 {
		t.Errorf("start time %d, %v", st, ok)
	}
	if !statKillPending([]byte(stat)) || statDying([]byte(stat)) {
		t.Error("SIGKILL pending, not exiting: misread")
	}
	if !statDying([]byte("1 (z) Z 0")) {
		t.Error("a zombie not dying")
	}

	const v1 = "13:misc:/\n12:memory:/kubepods/burstable/pod1/abc\n11:cpu,cpuacct:/kubepods/burstable/pod1/abc\n1:name=systemd:/x\n0::/\n"
	const v2 = "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope\n"
	for _, tc := range []struct {
		data    string
		unified bool
		want    string
		ok      bool
	}{
		{v1, false, "/kubepods/burstable/pod1/abc", true},
		{v1, true, "/", true},
		{v2, true, "/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope", true},
		{v2, false, "", false},
		{"12:memoryx:/no\n", false, "", false},
	} {
		got, ok := memoryCgroup([]byte(tc.data), tc.unified)
		if string(got) != tc.want || ok != tc.ok {
			t.Errorf("memoryCgroup(%q, %v) = %q, %v; want %q, %v", tc.data, tc.unified, got, ok, tc.want, tc.ok)
		}
	}
	for _, tc := range []struct {
		p, prefix, rel string
		inside         bool
	}{
		{"/a/b", "/a", "/b", true}, {"/a", "/a", "/", true}, {"/ab", "/a", "", false}, {"/x", "/", "/x", true},
	} {
		if in, rel := below(tc.p, tc.prefix); in != tc.inside || rel != tc.rel {
			t.Errorf("below(%q, %q) = %v, %q", tc.p, tc.prefix, in, rel)
		}
	}
}

// The kill path's recheck allocates nothing but the cgroup's name.
func BenchmarkRecheckParse(b *testing.B) {
	stat := []byte("4242 (perl) R 1 4242 4242 0 -1 4194560 120 0 0 0 0 0 0 0 20 0 1 0 987654 2236416 190 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n")
	cg := []byte("13:misc:/\n12:memory:/kubepods/burstable/pod1/abc\n11:cpu,cpuacct:/kubepods/burstable/pod1/abc\n")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_, _ = statUint(stat, 22)
		_ = statDying(stat) || statKillPending(stat)
		_, _ = memoryCgroup(cg, false)
	}
}
