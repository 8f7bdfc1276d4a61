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
	if len(fs) != 5 {
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
