package report

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/guard"
	"github.com/oom-guard/oom-guard/internal/reconcile"
)

// The caller hands these to the guard; a signature drift must not compile.
var (
	_ guard.Metrics     = (*Metrics)(nil)
	_ reconcile.Metrics = (*Metrics)(nil)
	_ reconcile.Sink    = (*Webhook)(nil)
	_ reconcile.Sink    = Sink(nil)
)

// seedEvent is seed 000's example event, field for field.
func seedEvent() event.Event {
	const cg = "/sys/fs/cgroup/memory/kubepods/burstable/pod3d6329e5-455f-11e9-a7e5-06925242d7ea/223d4795cc3b33e28e702f72e0497e1153c4a809de6b4363f27acc12a6781cdb"
	return event.Event{
		Hostname:   "172.21.16.23",
		Timestamp:  time.Date(2019, 3, 13, 7, 12, 14, 561650646, time.UTC),
		OOMCgroup:  cg,
		ProcCgroup: cg,
		Threshold:  205520896,
		Usage:      206483456,
		Killed:     "16481(fakeOOM) ",
		Stats:      "cache 20480|rss 205938688|rss_huge 199229440|mapped_file 0|",
		Policy:     "Container",
		Reason:     event.KillContainer,
		Processes:  []event.Process{{Pid: 16481, Comm: "fakeOOM"}},
	}
}

type request struct {
	method, path, contentType string
	body                      []byte
	at                        time.Time
}

// recorder is a webhook receiver that keeps every request and answers the
// n-th one with statuses[n], the last status repeating.
type recorder struct {
	statuses []int
	mu       sync.Mutex
	reqs     []request
}

func (rc *recorder) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	n := len(rc.reqs)
	rc.reqs = append(rc.reqs, request{r.Method, r.URL.Path, r.Header.Get("Content-Type"), body, time.Now()})
	rc.mu.Unlock()
	status := http.StatusOK
	if len(rc.statuses) > 0 {
		status = rc.statuses[min(n, len(rc.statuses)-1)]
	}
	if status/100 == 3 {
		rw.Header().Set("Location", "/elsewhere")
	}
	rw.WriteHeader(status)
}

func (rc *recorder) requests() []request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]request(nil), rc.reqs...)
}

// hangingHandler holds every request until the client gives up or the
// test ends, and says on arrived when one came in.
func hangingHandler(t *testing.T) (http.Handler, <-chan struct{}) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 100)
	t.Cleanup(func() { close(release) })
	return http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		// The server notices a client that hung up (Stop cancelling the POST)
		// only once the body is read; then the server's Close can finish.
		_, _ = io.Copy(io.Discard, r.Body)
		arrived <- struct{}{}
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}), arrived
}

// tcpTarget serves h on loopback TCP and returns its target.
func tcpTarget(t *testing.T, h http.Handler) *WebhookTarget {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	target, err := ParseWebhookURL(srv.URL + "/message")
	if err != nil {
		t.Fatal(err)
	}
	return target
}

// unixTarget serves h on a unix socket in the test's directory, as the
// seed's event writer does on its emptyDir.
func unixTarget(t *testing.T, h http.Handler) *WebhookTarget {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "events.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	target, err := ParseWebhookURL("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	return target
}

// refusedTarget is a loopback port nobody listens on any more.
func refusedTarget(t *testing.T) *WebhookTarget {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	target, err := ParseWebhookURL("http://" + addr + "/message")
	if err != nil {
		t.Fatal(err)
	}
	return target
}

// value reads one series of a counter or gauge from m's registry; labels
// are name, value pairs.
func value(t *testing.T, m *Metrics, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, s := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range s.GetLabel() {
					found = found || lp.GetName() == labels[i] && lp.GetValue() == labels[i+1]
				}
				if !found {
					continue series
				}
			}
			if c := s.GetCounter(); c != nil {
				return c.GetValue()
			}
			return s.GetGauge().GetValue()
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return 0
}

func webhookResult(t *testing.T, m *Metrics, result string) float64 {
	t.Helper()
	return value(t, m, "oomguard_webhook_events_total", "result", result)
}

// settled waits until the webhook has an outcome for n events.
func settled(t *testing.T, m *Metrics, n float64) {
	t.Helper()
	waitFor(t, func() bool {
		var sum float64
		for _, r := range []string{resultSent, resultDropped, resultFailed, resultAbandoned} {
			sum += webhookResult(t, m, r)
		}
		return sum >= n
	})
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting")
		}
		time.Sleep(2 * time.Millisecond)
	}
}
