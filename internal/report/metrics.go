package report

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/oom-guard/oom-guard/internal/event"
)

// Webhook results, the values of oomguard_webhook_events_total's label.
const (
	resultSent      = "sent"      // delivered, 2xx
	resultDropped   = "dropped"   // the queue was full when Send was called
	resultFailed    = "failed"    // every attempt failed, or a 4xx
	resultAbandoned = "abandoned" // still queued when Stop's time ran out
)

// Metrics is everything oom-guard counts, on a registry of its own so
// that nothing another package registers globally leaks into /metrics.
// It satisfies guard.Metrics.
type Metrics struct {
	reg                   *prometheus.Registry
	guarded               prometheus.Gauge
	unguarded             prometheus.Gauge
	faults                *prometheus.CounterVec
	crossings             prometheus.Counter
	actions               *prometheus.CounterVec
	standDowns            *prometheus.CounterVec
	kernelKills           *prometheus.CounterVec
	reaction              prometheus.Histogram
	webhookEvents         *prometheus.CounterVec
	webhookFailedAttempts prometheus.Counter

	kernel kernelMetrics // metrics_kernel.go
}

// NewMetrics registers oom-guard's metrics, plus the Go runtime's and the
// process's, on a new registry.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		guarded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "oomguard_guarded_cgroups", Help: "Memory cgroups with a threshold set.",
		}),
		unguarded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "oomguard_unguarded_cgroups", Help: "Memory cgroups with a limit that the guard could not register (out of file descriptors, memory or epoll watches) and retries with back-off.",
		}),
		faults: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oomguard_faults_total", Help: "Operations the kernel refused that the guard retries: registration (a cgroup's notifications), inotify-reset.",
		}, []string{"kind"}),
		crossings: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "oomguard_threshold_crossings_total", Help: "Threshold notifications from the kernel.",
		}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oomguard_actions_total", Help: "Kills (or, under the noop policy, would-be kills) by the guard.",
		}, []string{"reason"}),
		standDowns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oomguard_stand_downs_total", Help: "Crossings on which the guard chose not to act.",
		}, []string{"reason"}),
		kernelKills: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oomguard_kernel_oom_kills_total", Help: "OOM kills the kernel did itself.",
		}, []string{"reason"}),
		// The target is p99 under 1ms, so the buckets are dense around it.
		reaction: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "oomguard_reaction_seconds", Help: "From the kernel's threshold notification to the kill signal.",
			Buckets: []float64{10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3},
		}),
		webhookEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oomguard_webhook_events_total",
			Help: "Events by webhook outcome: sent, dropped (queue full), failed (gave up or 4xx), abandoned (at shutdown).",
		}, []string{"result"}),
		webhookFailedAttempts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "oomguard_webhook_failed_attempts_total", Help: "Webhook POSTs that failed (network error or non-2xx).",
		}),
	}
	m.reg.MustRegister(m.guarded, m.unguarded, m.faults, m.crossings, m.actions, m.standDowns, m.kernelKills, m.reaction,
		m.webhookEvents, m.webhookFailedAttempts,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Series that exist from the start at 0 make rate() and alerts work
	// before the first OOM.
	for _, r := range []event.Reason{event.KillContainer, event.KillProcess, event.WouldKill} {
		m.actions.WithLabelValues(string(r))
	}
	for _, r := range []event.Reason{event.CgroupOOM, event.SystemOOM, event.ChildOOM} {
		m.kernelKills.WithLabelValues(string(r))
	}
	for _, r := range []string{resultSent, resultDropped, resultFailed, resultAbandoned} {
		m.webhookEvents.WithLabelValues(r)
	}
	return m
}

func (m *Metrics) SetGuarded(n int)        { m.guarded.Set(float64(n)) }
func (m *Metrics) SetUnguarded(n int)      { m.unguarded.Set(float64(n)) }
func (m *Metrics) Fault(kind string)       { m.faults.WithLabelValues(kind).Inc() }
func (m *Metrics) Crossing()               { m.crossings.Inc() }
func (m *Metrics) StandDown(reason string) { m.standDowns.WithLabelValues(reason).Inc() }

// Action counts one action; a zero reaction means it was not measured
// (no kernel notification preceded it) and stays out of the histogram.
func (m *Metrics) Action(reason event.Reason, reaction time.Duration) {
	m.actions.WithLabelValues(string(reason)).Inc()
	if reaction > 0 {
		m.reaction.Observe(reaction.Seconds())
	}
}

func (m *Metrics) KernelKill(reason event.Reason) {
	m.kernelKills.WithLabelValues(string(reason)).Inc()
}

func (m *Metrics) webhookEvent(result string) { m.webhookEvents.WithLabelValues(result).Inc() }
func (m *Metrics) webhookFailedAttempt()      { m.webhookFailedAttempts.Inc() }

// Handler serves the registry in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}
