package kernel

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSummaryNamesEveryFeature(t *testing.T) {
	fs := []Feature{
		{Name: Pidfd, Since: "5.3", Present: false, Fallback: "kill(2)"},
		{Name: Openat2, Since: "5.6", Present: true},
	}
	got := Summary(fs)
	for _, want := range []string{"kernel " + Release() + ":", "pidfd (5.3) MISSING, fallback: kill(2)", "openat2 yes"} {
		if !strings.Contains(got, want) {
			t.Errorf("summary %q lacks %q", got, want)
		}
	}
}

// The oom_kill counter is found in the root cgroup's memory.oom_control,
// once per hierarchy.
func TestOOMKillCounterProbe(t *testing.T) {
	for _, tc := range []struct {
		file string
		want bool
	}{
		{"oom_kill_disable 0\nunder_oom 0\n", false},
		{"oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", true},
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "memory.oom_control"), []byte(tc.file), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := HasOOMKillCounter(dir); got != tc.want && !Hidden(OOMKillCounter) {
			t.Errorf("%q: %v, want %v", tc.file, got, tc.want)
		}
	}
}

func TestDetectOnThisMachine(t *testing.T) {
	fs := Detect("/sys/fs/cgroup/memory", false)
	if len(fs) != 6 {
		t.Fatalf("features %+v", fs)
	}
	for _, f := range fs {
		if !f.Present && f.Fallback == "" {
			t.Errorf("%s missing without a fallback", f.Name)
		}
		if f.Name == Pidfd && os.Getenv(HideEnv) == "" && os.Getenv("OOMGUARD_OLDKERNEL") == "" && !f.Present {
			t.Errorf("this 6.x kernel has pidfds: %+v", f)
		}
	}
}

// A hold needs the OOM wait of 3.12: CentOS 7's own releases (3.10.0-x)
// and anything that does not parse count as older.
func TestReleaseAtLeast(t *testing.T) {
	for _, tc := range []struct {
		release string
		want    bool
	}{
		{"3.10.0-1160.el7.x86_64", false},
		{"3.11.10", false},
		{"3.12", true},
		{"3.18.140", true},
		{"4.14.355", true},
		{"6.18.44-fc-v1045", true},
		{"10.0.1", true},
		{"2.6.32-754.el6", false},
		{"unknown", false},
		{"", false},
	} {
		if got := releaseAtLeast(tc.release, 3, 12); got != tc.want {
			t.Errorf("%q: %v, want %v", tc.release, got, tc.want)
		}
	}
}
