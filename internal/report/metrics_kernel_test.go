package report

import (
	"testing"

	"github.com/oom-guard/oom-guard/internal/kernel"
)

func TestKernelFeatureMetrics(t *testing.T) {
	m := NewMetrics()
	m.KernelFeatures([]kernel.Feature{
		{Name: kernel.Pidfd, Since: "5.3", Present: false, Fallback: "kill(2)"},
		{Name: kernel.Openat2, Since: "5.6", Present: true},
	})
	if v, ok := m.featureValue(kernel.Pidfd); !ok || v != 0 {
		t.Fatalf("pidfd %v %v, want 0", v, ok)
	}
	if v, ok := m.featureValue(kernel.Openat2); !ok || v != 1 {
		t.Fatalf("openat2 %v %v, want 1", v, ok)
	}
	m.KillFailure("pidfd_open", "ENOSYS")
}
