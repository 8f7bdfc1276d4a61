package report

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

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
	workloads             *workloads
	guarded               prometheus.Gauge
	unguarded             prometheus.Gauge
	faults                *prometheus.CounterVec
	crossings             prometheus.Counter
	actions               *prometheus.CounterVec
	standDowns            *prometheus.CounterVec
	holdWaits             prometheus.Counter
	kernelKills           *prometheus.CounterVec
	reaction              prometheus.Histogram
	loopBusy              prometheus.Histogram
	seriesFolded          prometheus.Counter
	webhookEvents         *prometheus.CounterVec
	webhookFailedAttempts prometheus.Counter

	kernel kernelMetrics // metrics_kernel.go
}

// The labels that say which workload an OOM hit, as kube-state-metrics
// names them; empty where the kill was not in a pod's container.
var workloadLabels = []string{"namespace", "pod", "container"}

// NewMetrics registers oom-guard's metrics, plus the Go runtime's and the
// process's, on a new registry.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg:       prometheus.NewRegistry(),
		workloads: newWorkloads(maxWorkloads, workloadGrace),
		guarded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "oomguard_guarded_cgroups", Help: "Memory cgroups with a threshold set.",
		}),
		unguarded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "oomguard_unguarded_cgroups", Help: "Memory cgroups with a limit that the guard could not register (out of file descriptors, memory or epoll watches) and retries with back-off.",
		}),
		faults: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oomguard_faults_total", Help: "Operations the kernel refused: registration (a cgroup's notifications, retried), inotify-reset (retried), hold (oom_kill_disable, --v1-hold-oom: the cgroup is guarded without a hold).",
		}, []string{"kind"}),
		crossings: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "oomguard_threshold_crossings_total", Help: "Threshold notifications from the kernel.",
		}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oomguard_actions_total", Help: "Kills (or, under the noop policy, would-be kills) by the guard, by reason and workload.",
		}, append([]string{"reason"}, workloadLabels...)),
		standDowns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oomguard_stand_downs_total", Help: "Crossings on which the guard chose not to act.",
		}, []string{"reason"}),
		holdWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "oomguard_hold_waits_total",
			Help: "Times the tasks of a held cgroup (--v1-hold-oom) met its limit before the guard had killed, and waited for its kill instead of the kernel killing: the margin filled before the guard ran. Rising steadily: widen the margin, or give the guard CPU.",
		}),
		kernelKills: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oomguard_kernel_oom_kills_total", Help: "OOM kills the kernel did itself, each once, by reason (CgroupOOM, SystemOOM, ContainerChildOOMKilled) and workload.",
		}, append([]string{"reason"}, workloadLabels...)),
		seriesFolded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "oomguard_workload_series_folded_total",
			Help: "Kills counted without their namespace, pod and container labels because the series of more workloads than the cap already existed.",
		}),
		// The target is p99 under 1ms, so the buckets are dense around it.
		reaction: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "oomguard_reaction_seconds", Help: "From the kernel's threshold notification to the kill signal.",
			Buckets: []float64{10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3},
		}),
		// The loop's turns: the requirement is under 1ms each, so the
		// buckets are dense around it and reach far enough to show a stall.
		loopBusy: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "oomguard_loop_busy_seconds", Help: "Busy time of each turn of the guard's real-time loop, from its wake-up to its next wait: no crossing is served meanwhile.",
			Buckets: []float64{10e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3},
		}),
		webhookEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oomguard_webhook_events_total",
			Help: "Events by webhook outcome: sent, dropped (queue full), failed (gave up or 4xx), abandoned (at shutdown).",
		}, []string{"result"}),
		webhookFailedAttempts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "oomguard_webhook_failed_attempts_total", Help: "Webhook POSTs that failed (network error or non-2xx).",
		}),
	}
	m.reg.MustRegister(m.guarded, m.unguarded, m.faults, m.crossings, m.actions, m.standDowns, m.holdWaits, m.kernelKills, m.reaction, m.loopBusy, m.seriesFolded,
		m.webhookEvents, m.webhookFailedAttempts,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Series that exist from the start at 0 make rate() and alerts work
	// before the first OOM.
	for _, r := range []event.Reason{event.KillContainer, event.KillProcess, event.WouldKill} {
		m.actions.WithLabelValues(string(r), "", "", "")
	}
	for _, r := range []event.Reason{event.CgroupOOM, event.SystemOOM, event.ChildOOM} {
		m.kernelKills.WithLabelValues(string(r), "", "", "")
	}
	for _, k := range []string{"registration", "inotify-reset", "hold"} {
		m.faults.WithLabelValues(k)
	}
	for _, r := range []string{resultSent, resultDropped, resultFailed, resultAbandoned} {
		m.webhookEvents.WithLabelValues(r)
	}
	return m
}

func (m *Metrics) SetGuarded(n int)         { m.guarded.Set(float64(n)) }
func (m *Metrics) SetUnguarded(n int)       { m.unguarded.Set(float64(n)) }
func (m *Metrics) Fault(kind string)        { m.faults.WithLabelValues(kind).Inc() }
func (m *Metrics) Crossing()                { m.crossings.Inc() }
func (m *Metrics) StandDown(reason string)  { m.standDowns.WithLabelValues(reason).Inc() }
func (m *Metrics) HoldWait()                { m.holdWaits.Inc() }
func (m *Metrics) LoopBusy(d time.Duration) { m.loopBusy.Observe(d.Seconds()) }

// Event counts one event, as the stage that makes the events hands it out:
// each kill once, under its final reason, with its workload's labels. A
// reaction of zero was not measured (no kernel notification preceded the
// action) and stays out of the histogram.
func (m *Metrics) Event(ev event.Event) {
	labels, folded := m.workloads.labels(ev)
	if folded {
		m.seriesFolded.Inc()
	}
	labels = append([]string{string(ev.Reason)}, labels...)
	switch ev.Reason {
	case event.KillContainer, event.KillProcess, event.WouldKill:
		m.actions.WithLabelValues(labels...).Inc()
		if ev.Reaction > 0 {
			m.reaction.Observe(ev.Reaction.Seconds())
		}
	case event.CgroupOOM, event.SystemOOM, event.ChildOOM:
		m.kernelKills.WithLabelValues(labels...).Inc()
	}
}

// CountDropped exports what a stage of the event path (named stage)
// dropped, read from count at each scrape.
func (m *Metrics) CountDropped(stage string, count func() uint64) {
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "oomguard_events_dropped_total", Help: "Events (or facts) a stage of the event path dropped: its queue was full, or it had stopped.",
		ConstLabels: prometheus.Labels{"stage": stage},
	}, func() float64 { return float64(count()) }))
}

func (m *Metrics) webhookEvent(result string) { m.webhookEvents.WithLabelValues(result).Inc() }
func (m *Metrics) webhookFailedAttempt()      { m.webhookFailedAttempts.Inc() }

// Handler serves the registry in the Prometheus exposition formats. Each
// scrape first drops the series of pods deleted for longer than the grace
// period.
func (m *Metrics) Handler() http.Handler {
	gather := prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		m.sweep(time.Now())
		return m.reg.Gather()
	})
	return promhttp.HandlerFor(gather, promhttp.HandlerOpts{Registry: m.reg})
}

// sweep deletes the series of the workloads gone for longer than the grace.
func (m *Metrics) sweep(now time.Time) {
	for _, w := range m.workloads.expired(now) {
		match := prometheus.Labels{"namespace": w.namespace, "pod": w.pod, "container": w.container}
		m.actions.DeletePartialMatch(match)
		m.kernelKills.DeletePartialMatch(match)
	}
}
