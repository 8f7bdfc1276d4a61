package report

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/oom-guard/oom-guard/internal/kernel"
)

// kernelMetrics say what the running kernel has and what failed for good:
// a block of its own, registered by KernelFeatures.
type kernelMetrics struct {
	features     *prometheus.GaugeVec
	killFailures *prometheus.CounterVec
}

// KernelFeatures registers the kernel metrics and sets one series per
// feature the guard uses: oomguard_kernel_feature{release, feature, since,
// fallback} is 1 where the kernel has it, 0 where the fallback is in use.
// Called once, at start.
func (m *Metrics) KernelFeatures(fs []kernel.Feature) {
	m.kernel.features = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "oomguard_kernel_feature",
		Help: "Kernel features the guard uses: 1 present, 0 missing (the fallback label says what the guard does instead).",
	}, []string{"release", "feature", "since", "fallback"})
	m.kernel.killFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "oomguard_kill_failures_permanent_total",
		Help: "Kill attempts that failed for a reason that will not go away (ENOSYS, EPERM), by system call and errno; the next fallback was tried at once.",
	}, []string{"call", "errno"})
	m.reg.MustRegister(m.kernel.features, m.kernel.killFailures)
	for _, f := range fs {
		v, fallback := 1.0, ""
		if !f.Present {
			v, fallback = 0, f.Fallback
		}
		m.kernel.features.WithLabelValues(kernel.Release(), f.Name, f.Since, fallback).Set(v)
	}
}

// KillFailure counts one permanent kill failure (see kill.SetPermanentFailureHook).
func (m *Metrics) KillFailure(call, errno string) {
	if m.kernel.killFailures != nil {
		m.kernel.killFailures.WithLabelValues(call, errno).Inc()
	}
}

// featureValue is a feature gauge's value, for tests.
func (m *Metrics) featureValue(name string) (float64, bool) {
	mfs, err := m.reg.Gather()
	if err != nil {
		return 0, false
	}
	for _, mf := range mfs {
		if mf.GetName() != "oomguard_kernel_feature" {
			continue
		}
		for _, s := range mf.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "feature" && l.GetValue() == name {
					return s.GetGauge().GetValue(), true
				}
			}
		}
	}
	return 0, false
}
