package report

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/event"
)

// KubeEventAnnotation is the annotation that carries the event's JSON (the
// seed's webhook format, field for field, plus the additions) on every
// Kubernetes Event, for tools that read Events rather than the webhook.
const KubeEventAnnotation = "oom-guard/event"

// KubeComponent is the Events' source component (the seed's SOURCE column
// reads "oom-guard, NODE").
const KubeComponent = "oom-guard"

// Bounds of what the sink holds. Every Event waiting while the API server is
// slow or down holds its message and annotation: at most kubeBacklog of
// them, a few KiB each.
const (
	maxKubeMessage    = 1024    // events.k8s.io's own limit on a note
	maxKubeAnnotation = 4 << 10 // the seed's JSON; memory.stat alone is ~1 KiB
	kubeBacklog       = 256     // Events handed to client-go and not yet taken by its writer
	kubeStopPoll      = 20 * time.Millisecond
	kubeQuiet         = 50 * time.Millisecond // after the backlog empties: the last write's start
	kubeDropLogEvery  = 10 * time.Second
)

// Results of writing Events, the values of oomguard_kube_events_total's label.
const (
	kubeCreated = "created" // a new Event object
	kubePatched = "patched" // a repeat: the existing Event's count went up
	kubeFailed  = "failed"  // a write attempt failed (client-go retries up to 12 times)
	kubeDropped = "dropped" // the backlog was full, or the sink stopped
)

// KubeOptions configures a KubeEvents sink.
type KubeOptions struct {
	// Node is this node's name (the Node object's, spec.nodeName): the
	// involved object of events that no pod owns, and the Events' source
	// host.
	Node string
	// RetryInterval is the wait between attempts to write an Event while
	// the API server fails; client-go's default (10s) when zero.
	RetryInterval time.Duration
}

// KubeEvents turns events into Kubernetes Events through client-go's event
// machinery (record.EventBroadcaster), the kubelet's own: on the Pod when
// the cgroup is a pod's and the runtime named it, so `kubectl describe
// pod` shows it; on the Node otherwise. client-go aggregates repeats as it
// does for the kubelet (identical Events become one with a count; more than
// 10 similar ones in 10 minutes become one "combined from similar events")
// and rate-limits each object's Events (a burst of 25, then one per 5
// minutes).
//
// Send never blocks: it hands the Event to client-go's queue, whose one
// goroutine correlates and writes, retrying a failed write up to 12 times.
// The sink counts what it handed over and what that goroutine has taken
// (client-go calls the spam filter's key function once per Event it
// takes), and drops, counted, what would make the difference exceed
// kubeBacklog: so a slow or dead API server delays no kill and holds a
// bounded amount of memory, and client-go's own drop path (which logs each
// dropped Event, synchronously) is never reached.
type KubeEvents struct {
	node        string
	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder
	sink        *countingSink

	mu      sync.Mutex // orders Send against Stop's shutdown of the broadcaster
	closed  bool
	handed  atomic.Int64 // Events given to the recorder
	taken   atomic.Int64 // Events client-go's writer has taken from its queue
	dropped atomic.Int64 // not yet logged
	lastLog atomic.Int64 // unix nanoseconds of the last drop warning
}

// NewKubeEvents starts writing Events through client
// (NewKubeEventsClient). m may be nil.
func NewKubeEvents(client KubeEventsClient, opts KubeOptions, m *Metrics) *KubeEvents {
	k := &KubeEvents{node: opts.Node}
	bopts := []record.BroadcasterOption{record.WithCorrelatorOptions(record.CorrelatorOptions{SpamKeyFunc: k.takenKey})}
	if opts.RetryInterval > 0 {
		bopts = append(bopts, record.WithSleepDuration(opts.RetryInterval))
	}
	k.broadcaster = record.NewBroadcaster(bopts...)
	k.sink = &countingSink{next: client, counts: kubeCounters(m)}
	k.broadcaster.StartRecordingToSink(k.sink)
	k.recorder = k.broadcaster.NewRecorder(eventsScheme, corev1.EventSource{Component: KubeComponent, Host: opts.Node})
	return k
}

// Send records ev as a Kubernetes Event and returns at once.
func (k *KubeEvents) Send(ev event.Event) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed || k.handed.Load()-k.taken.Load() >= kubeBacklog {
		k.dropped.Add(1)
		k.sink.count(kubeDropped)
		return
	}
	ref := k.involvedObject(ev)
	annotations := map[string]string{KubeEventAnnotation: annotationJSON(ev)}
	k.handed.Add(1)
	k.recorder.AnnotatedEventf(ref, annotations, corev1.EventTypeWarning, string(ev.Reason), "%s", truncate(ev.Message, maxKubeMessage))
}

// takenKey is client-go's spam-filter key (the same fields as its own
// default: source, involved object, type), and the sign that its writer
// has taken one more Event from the queue. It runs on that writer's
// goroutine, which is also where dropped Events are logged: never on the
// kill path.
func (k *KubeEvents) takenKey(ev *corev1.Event) string {
	k.taken.Add(1)
	k.logDrops()
	o := ev.InvolvedObject
	return strings.Join([]string{ev.Source.Component, ev.Source.Host, o.Kind, o.Namespace, o.Name, string(o.UID), o.APIVersion, ev.Type}, "")
}

func (k *KubeEvents) logDrops() {
	now := time.Now().UnixNano()
	if k.dropped.Load() == 0 || now-k.lastLog.Load() < int64(kubeDropLogEvery) {
		return
	}
	k.lastLog.Store(now)
	klog.Warningf("kubernetes events: %d event(s) dropped: %d were waiting for the API server", k.dropped.Swap(0), kubeBacklog)
}

// Stop takes no more events, waits until client-go's writer has taken
// everything handed to it and its last write has ended (or ctx ends), then
// shuts the broadcaster down: an Event still being retried then is lost.
// Stop may be called more than once.
func (k *KubeEvents) Stop(ctx context.Context) {
	k.mu.Lock()
	already := k.closed
	k.closed = true
	k.mu.Unlock()
	if already {
		return
	}
	t := time.NewTicker(kubeStopPoll)
	defer t.Stop()
	for k.taken.Load() < k.handed.Load() || !k.sink.idleFor(kubeQuiet) {
		select {
		case <-ctx.Done():
			klog.Warningf("kubernetes events: stopped with %d event(s) unwritten: %v", k.handed.Load()-k.taken.Load(), ctx.Err())
			k.broadcaster.Shutdown()
			return
		case <-t.C:
		}
	}
	k.broadcaster.Shutdown()
}

// involvedObject is the Pod when the runtime named it, else the Node. A
// pod known by its UID alone (runtime unreachable) goes on the Node, its
// UID in the message: naming the pod would take a lookup by UID, which
// the API only offers as a list of every pod, and RBAC to read pods.
func (k *KubeEvents) involvedObject(ev event.Event) *corev1.ObjectReference {
	if ev.PodName != "" && ev.PodNamespace != "" {
		ref := &corev1.ObjectReference{
			Kind: "Pod", APIVersion: "v1",
			Namespace: ev.PodNamespace, Name: ev.PodName, UID: types.UID(ev.PodUID),
		}
		// The kubelet's own form for a container of a pod: kubectl shows it
		// as the Event's sub-object.
		if ev.ContainerName != "" {
			ref.FieldPath = fmt.Sprintf("spec.containers{%s}", ev.ContainerName)
		}
		return ref
	}
	node := k.node
	if node == "" {
		node = ev.Hostname
	}
	// UID = name, as the kubelet does: `kubectl describe node` looks for
	// both the node's UID and its name.
	return &corev1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: node, UID: types.UID(node)}
}

// annotationJSON is the event's JSON, with the process list (the part that
// grows with the container) left out when the whole would be too large,
// and then the memory.stat text.
func annotationJSON(ev event.Event) string {
	b, err := json.Marshal(ev)
	if err == nil && len(b) <= maxKubeAnnotation {
		return string(b)
	}
	ev.Processes = nil
	if b, err = json.Marshal(ev); err == nil && len(b) <= maxKubeAnnotation {
		return string(b)
	}
	ev.Stats = ""
	ev.Killed = truncate(ev.Killed, 512)
	ev.Message = truncate(ev.Message, 512)
	if b, err = json.Marshal(ev); err == nil {
		return string(b)
	}
	return "" // only a timestamp beyond year 9999
}

// truncate cuts s to at most n bytes on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "..."
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// countingSink is client-go's Event writer with the outcome of each call
// counted, and its activity tracked so that Stop knows when the last write
// has ended.
type countingSink struct {
	next     record.EventSink
	counts   *prometheus.CounterVec
	inFlight atomic.Int32
	last     atomic.Int64 // unix nanoseconds of the last write's start or end
}

func (s *countingSink) touch() { s.last.Store(time.Now().UnixNano()) }

func (s *countingSink) idleFor(d time.Duration) bool {
	return s.inFlight.Load() == 0 && time.Since(time.Unix(0, s.last.Load())) >= d
}

func (s *countingSink) do(result string, write func() (*corev1.Event, error)) (*corev1.Event, error) {
	s.inFlight.Add(1)
	s.touch()
	defer func() {
		s.touch()
		s.inFlight.Add(-1)
	}()
	ev, err := write()
	if err != nil {
		result = kubeFailed
	}
	s.count(result)
	return ev, err
}

func (s *countingSink) count(result string) {
	if s.counts != nil {
		s.counts.WithLabelValues(result).Inc()
	}
}

func (s *countingSink) Create(ev *corev1.Event) (*corev1.Event, error) {
	return s.do(kubeCreated, func() (*corev1.Event, error) { return s.next.Create(ev) })
}

func (s *countingSink) Update(ev *corev1.Event) (*corev1.Event, error) {
	return s.do(kubePatched, func() (*corev1.Event, error) { return s.next.Update(ev) })
}

func (s *countingSink) Patch(ev *corev1.Event, patch []byte) (*corev1.Event, error) {
	return s.do(kubePatched, func() (*corev1.Event, error) { return s.next.Patch(ev, patch) })
}

// kubeCounters registers oomguard_kube_events_total on m's registry (once:
// a second sink on the same Metrics shares the counter).
func kubeCounters(m *Metrics) *prometheus.CounterVec {
	if m == nil {
		return nil
	}
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "oomguard_kube_events_total",
		Help: "Kubernetes Events by outcome: created, patched (a repeat counted on an existing Event), failed (a write attempt; client-go retries), dropped (backlog full).",
	}, []string{"result"})
	if err := m.reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				return existing
			}
		}
		klog.Warningf("kubernetes events: metrics not registered: %v", err)
		return nil
	}
	for _, r := range []string{kubeCreated, kubePatched, kubeFailed, kubeDropped} {
		c.WithLabelValues(r)
	}
	return c
}
