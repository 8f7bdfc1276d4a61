// Package report carries oom-guard's events and numbers out of the process:
// to the log, to a webhook (the seed's event-writer sidecar), and to
// Prometheus through a small HTTP server that also answers health checks.
// Nothing here may delay a kill: every Sink's Send returns at once.
package report

import (
	"encoding/json"
	"strings"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/event"
)

// Sink takes events. Send must never block: it runs on the guard's path
// right after a kill.
type Sink interface{ Send(event.Event) }

type fanout []Sink

// Fanout sends each event to every non-nil sink, in order.
func Fanout(sinks ...Sink) Sink {
	var f fanout
	for _, s := range sinks {
		if s != nil {
			f = append(f, s)
		}
	}
	return f
}

func (f fanout) Send(ev event.Event) {
	for _, s := range f {
		s.Send(ev)
	}
}

// jsonVerbosity is the klog level from which the log sink also prints each
// event's JSON; the seed DaemonSet runs at --v=2 and gets one line per event.
const jsonVerbosity = 3

type logSink struct{}

// NewLog returns a Sink that writes one line per event through klog, and
// the event's JSON as well at --v=3 and above.
func NewLog() Sink { return logSink{} }

func (logSink) Send(ev event.Event) {
	klog.Warningf("%s", logLine(ev))
	if klog.V(jsonVerbosity).Enabled() {
		if b, err := json.Marshal(ev); err == nil {
			klog.Infof("event JSON: %s", b)
		}
	}
}

// logLine is the event's message, after its reason, on one line whatever
// a process name or path contains.
func logLine(ev event.Event) string {
	return strings.NewReplacer("\n", `\n`, "\r", `\r`).Replace(string(ev.Reason) + ": " + ev.Message)
}
