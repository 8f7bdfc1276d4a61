package report

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/event"
)

// WebhookOptions tunes a Webhook; a zero (or negative) field takes its default.
type WebhookOptions struct {
	QueueSize   int           // events waiting to be sent; default 1024
	Timeout     time.Duration // one POST, from dialling to the end of the response; default 5s
	MaxAttempts int           // POSTs per event, the first included; default 5
	BaseBackoff time.Duration // wait after the first failure, doubled each time; default 100ms
	MaxBackoff  time.Duration // cap of that wait; default 5s
}

func (o WebhookOptions) withDefaults() WebhookOptions {
	def := func(v, d time.Duration) time.Duration {
		if v <= 0 {
			return d
		}
		return v
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 1024
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 5
	}
	o.Timeout = def(o.Timeout, 5*time.Second)
	o.BaseBackoff = def(o.BaseBackoff, 100*time.Millisecond)
	o.MaxBackoff = def(o.MaxBackoff, 5*time.Second)
	return o
}

// backoff is the wait after the n-th failed attempt (n from 1).
func (o WebhookOptions) backoff(n int) time.Duration {
	d := o.BaseBackoff
	for i := 1; i < n; i++ {
		if d > o.MaxBackoff/2 {
			return o.MaxBackoff
		}
		d *= 2
	}
	return min(d, o.MaxBackoff)
}

// Webhook POSTs each event's JSON to a target from one goroutine of its
// own, so that a slow or dead receiver never delays a kill: Send only
// queues, and what does not fit in the queue is dropped and counted.
type Webhook struct {
	target  *WebhookTarget
	opts    WebhookOptions
	m       *Metrics
	client  *http.Client
	ctx     context.Context // cancelled when Stop's time runs out
	cancel  context.CancelFunc
	done    chan struct{} // closed when the worker has returned
	dropped atomic.Int64  // queue-full drops not yet logged

	mu     sync.Mutex // orders Send's enqueue against Stop's close
	closed bool
	queue  chan event.Event
}

// NewWebhook starts the worker. target comes from ParseWebhookURL; m may
// be nil, and then nothing is counted where anyone can see it.
func NewWebhook(target *WebhookTarget, opts WebhookOptions, m *Metrics) *Webhook {
	if m == nil {
		m = NewMetrics()
	}
	opts = opts.withDefaults()
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: opts.Timeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        1,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: opts.Timeout,
	}
	if sock := target.Socket; sock != "" {
		tr.Proxy = nil
		dial := tr.DialContext
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dial(ctx, "unix", sock)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &Webhook{
		target: target, opts: opts, m: m,
		// A redirect is a receiver's mistake to fix, not a hop to take
		// (over a unix socket it would lead back to the same socket).
		client: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		ctx:    ctx, cancel: cancel,
		done:  make(chan struct{}),
		queue: make(chan event.Event, opts.QueueSize),
	}
	go w.run()
	return w
}

// Send queues ev and returns at once; when the queue is full, or after
// Stop, ev is dropped and counted.
func (w *Webhook) Send(ev event.Event) {
	// The caller may reuse its slice once Send returns; the worker reads it later.
	ev.Processes = slices.Clone(ev.Processes)
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		select {
		case w.queue <- ev:
			return
		default:
		}
	}
	w.m.webhookEvent(resultDropped)
	w.dropped.Add(1)
}

// Stop takes no more events and sends what is queued until ctx ends; then
// it cuts the request in flight short, counts the rest as abandoned, and
// returns. Stop may be called more than once.
func (w *Webhook) Stop(ctx context.Context) {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.queue)
	}
	w.mu.Unlock()
	select {
	case <-w.done:
	case <-ctx.Done():
		w.cancel()
		<-w.done // quick now: every wait of the worker watches w.ctx
	}
	w.cancel()
}

func (w *Webhook) run() {
	defer close(w.done)
	for ev := range w.queue {
		if w.ctx.Err() != nil {
			w.m.webhookEvent(resultAbandoned)
			continue
		}
		w.deliver(ev)
		if n := w.dropped.Swap(0); n > 0 {
			klog.Warningf("webhook %s: %d event(s) dropped, the queue of %d was full", w.target, n, w.opts.QueueSize)
		}
	}
}

// deliver POSTs ev, retrying network errors and 5xx with back-off, and
// counts the outcome.
func (w *Webhook) deliver(ev event.Event) {
	body, err := json.Marshal(ev)
	if err != nil { // only a timestamp beyond year 9999 can do this
		klog.Errorf("webhook %s: %s event for %s not sent: %v", w.target, ev.Reason, ev.OOMCgroup, err)
		w.m.webhookEvent(resultFailed)
		return
	}
	for attempt := 1; ; attempt++ {
		retry, err := w.post(body)
		if err == nil {
			w.m.webhookEvent(resultSent)
			return
		}
		if w.ctx.Err() != nil { // cut short by Stop: not the receiver's failure
			w.m.webhookEvent(resultAbandoned)
			return
		}
		w.m.webhookFailedAttempt()
		if !retry || attempt >= w.opts.MaxAttempts {
			klog.Errorf("webhook %s: %s event for %s not sent after %d attempt(s): %v", w.target, ev.Reason, ev.OOMCgroup, attempt, err)
			w.m.webhookEvent(resultFailed)
			return
		}
		wait := w.opts.backoff(attempt)
		klog.V(2).Infof("webhook %s: attempt %d: %v; retrying in %v", w.target, attempt, err, wait)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-w.ctx.Done():
			t.Stop()
			w.m.webhookEvent(resultAbandoned)
			return
		}
	}
}

// post makes one attempt and says whether a failure is worth retrying:
// network errors and 5xx may pass, a 3xx or 4xx will not.
func (w *Webhook) post(body []byte) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(w.ctx, w.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.target.URL, bytes.NewReader(body))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.client.Do(req)
	if err != nil {
		return true, err
	}
	defer resp.Body.Close()
	// Reading the body lets the connection be reused; a bounded read keeps a
	// chatty receiver from holding the worker.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return false, nil
	case resp.StatusCode >= 500:
		return true, fmt.Errorf("HTTP %s", resp.Status)
	default:
		return false, fmt.Errorf("HTTP %s", resp.Status)
	}
}
