package report

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"testing"
	"time"
)

// The event writer parses the seed's field names; any rename breaks it.
func TestWebhookPostsSeedJSON(t *testing.T) {
	for _, tc := range []struct {
		name   string
		target func(*testing.T, http.Handler) *WebhookTarget
	}{
		{"tcp", tcpTarget},
		{"unix socket", unixTarget},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := &recorder{}
			m := NewMetrics()
			w := NewWebhook(tc.target(t, rc), WebhookOptions{}, m)
			defer w.Stop(context.Background())
			ev := seedEvent()
			w.Send(ev)
			settled(t, m, 1)

			reqs := rc.requests()
			if len(reqs) != 1 || webhookResult(t, m, resultSent) != 1 {
				t.Fatalf("got %d requests, %v sent; want 1, 1", len(reqs), webhookResult(t, m, resultSent))
			}
			r := reqs[0]
			if r.method != http.MethodPost || r.path != "/message" || r.contentType != "application/json" {
				t.Errorf("got %s %s (%s), want POST /message (application/json)", r.method, r.path, r.contentType)
			}
			want, _ := json.Marshal(ev)
			if !bytes.Equal(r.body, want) {
				t.Errorf("body\n got %s\nwant %s", r.body, want)
			}
			var fields map[string]json.RawMessage
			if err := json.Unmarshal(r.body, &fields); err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{"hostname", "timestamp", "oomcgroup", "proccgroup", "threshold", "usage", "killed", "stats", "policy", "reason"} {
				if _, ok := fields[f]; !ok {
					t.Errorf("no %q in %s", f, r.body)
				}
			}
			for f, v := range map[string]string{
				"hostname": `"172.21.16.23"`, "timestamp": `"2019-03-13T07:12:14.561650646Z"`,
				"threshold": "205520896", "usage": "206483456", "killed": `"16481(fakeOOM) "`,
				"policy": `"Container"`, "reason": `"OomGuardKillContainer"`,
			} {
				if string(fields[f]) != v {
					t.Errorf("%s = %s, want %s", f, fields[f], v)
				}
			}
		})
	}
}

// The guard calls Send right after a kill: a dead receiver must cost it
// nothing, and what cannot be queued must show up as dropped.
func TestWebhookSendNeverBlocks(t *testing.T) {
	for _, tc := range []struct {
		name string
		// stuck returns a webhook whose worker is known to be stuck on the
		// first event: in a hung POST, or in back-off after a refusal.
		stuck func(*testing.T, *Metrics) *Webhook
	}{
		{"hung server", func(t *testing.T, m *Metrics) *Webhook {
			h, arrived := hangingHandler(t)
			w := NewWebhook(tcpTarget(t, h), WebhookOptions{QueueSize: 4, Timeout: time.Minute}, m)
			w.Send(seedEvent())
			<-arrived
			return w
		}},
		{"connection refused", func(t *testing.T, m *Metrics) *Webhook {
			w := NewWebhook(refusedTarget(t), WebhookOptions{QueueSize: 4, BaseBackoff: time.Hour}, m)
			w.Send(seedEvent())
			waitFor(t, func() bool { return value(t, m, "oomguard_webhook_failed_attempts_total") == 1 })
			return w
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMetrics()
			w := tc.stuck(t, m)
			ev := seedEvent()
			const n = 1000
			var worst time.Duration
			start := time.Now()
			for range n {
				t0 := time.Now()
				w.Send(ev)
				worst = max(worst, time.Since(t0))
			}
			total := time.Since(start)
			t.Logf("%d Sends: %v in all, %v on average, %v at worst", n, total, total/n, worst)
			// Generous bounds for -race and a busy 2-core machine; a blocked
			// Send would take the POST's minute or the back-off's hour.
			if total > 200*time.Millisecond || worst > 100*time.Millisecond {
				t.Errorf("Send blocked: %v in all, %v at worst", total, worst)
			}
			// The worker holds the first event, so 4 more fit and the rest drop.
			if got := webhookResult(t, m, resultDropped); got != n-4 {
				t.Errorf("dropped = %v, want %d", got, n-4)
			}

			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			w.Stop(ctx)
			if got := webhookResult(t, m, resultAbandoned); got != 5 {
				t.Errorf("abandoned = %v, want 5 (one in flight, four queued)", got)
			}
		})
	}
}

// Shutdown has a fixed budget (5s in main): a hung receiver must not
// stretch it.
func TestWebhookStopKeepsItsDeadline(t *testing.T) {
	h, arrived := hangingHandler(t)
	m := NewMetrics()
	w := NewWebhook(unixTarget(t, h), WebhookOptions{Timeout: time.Minute}, m)
	for range 3 {
		w.Send(seedEvent())
	}
	<-arrived
	const budget = 200 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	start := time.Now()
	w.Stop(ctx)
	if took := time.Since(start); took > budget+300*time.Millisecond {
		t.Errorf("Stop took %v with a %v budget", took, budget)
	}
	if got := webhookResult(t, m, resultAbandoned); got != 3 {
		t.Errorf("abandoned = %v, want 3", got)
	}
	// A late event from a racing caller must neither panic nor vanish uncounted.
	w.Send(seedEvent())
	w.Stop(context.Background())
	if got := webhookResult(t, m, resultDropped); got != 1 {
		t.Errorf("dropped after Stop = %v, want 1", got)
	}
}

// Events queued at shutdown are worth sending while there is time.
func TestWebhookStopDrainsQueue(t *testing.T) {
	rc := &recorder{}
	m := NewMetrics()
	w := NewWebhook(tcpTarget(t, rc), WebhookOptions{}, m)
	const n = 20
	for range n {
		w.Send(seedEvent())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w.Stop(ctx)
	if got, sent := len(rc.requests()), webhookResult(t, m, resultSent); got != n || sent != n {
		t.Errorf("received %d, sent %v; want %d", got, sent, n)
	}
}

func TestWebhookRetries(t *testing.T) {
	farFuture := seedEvent()
	farFuture.Timestamp = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) // json.Marshal refuses it
	for _, tc := range []struct {
		name     string
		statuses []int
		tooLate  bool // an event json.Marshal refuses
		attempts int  // requests the receiver gets
		result   string
		failures float64 // oomguard_webhook_failed_attempts_total
	}{
		{"5xx then success", []int{503, 500, 200}, false, 3, resultSent, 2},
		{"5xx until out of attempts", []int{502}, false, 3, resultFailed, 3},
		{"4xx is final", []int{400}, false, 1, resultFailed, 1},
		{"404 is final", []int{404}, false, 1, resultFailed, 1},
		{"redirect is not followed", []int{307}, false, 1, resultFailed, 1},
		{"unencodable event", nil, true, 0, resultFailed, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := &recorder{statuses: tc.statuses}
			m := NewMetrics()
			opts := WebhookOptions{MaxAttempts: 3, BaseBackoff: 20 * time.Millisecond, MaxBackoff: 40 * time.Millisecond}
			w := NewWebhook(tcpTarget(t, rc), opts, m)
			defer w.Stop(context.Background())
			ev := seedEvent()
			if tc.tooLate {
				ev = farFuture
			}
			w.Send(ev)
			// The outcome is counted after the last attempt, so no request can follow.
			settled(t, m, 1)
			if got := webhookResult(t, m, tc.result); got != 1 {
				t.Errorf("%s = %v, want 1", tc.result, got)
			}
			if got := value(t, m, "oomguard_webhook_failed_attempts_total"); got != tc.failures {
				t.Errorf("failed attempts = %v, want %v", got, tc.failures)
			}
			reqs := rc.requests()
			if len(reqs) != tc.attempts {
				t.Fatalf("%d requests, want %d", len(reqs), tc.attempts)
			}
			// Back-off doubles from BaseBackoff up to MaxBackoff.
			for i := 1; i < len(reqs); i++ {
				want := opts.backoff(i)
				if gap := reqs[i].at.Sub(reqs[i-1].at); gap < want {
					t.Errorf("attempt %d came %v after the previous one, want at least %v", i+1, gap, want)
				}
				if !bytes.Equal(reqs[i].body, reqs[0].body) {
					t.Errorf("attempt %d has another body", i+1)
				}
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	o := WebhookOptions{}.withDefaults()
	var got []time.Duration
	for n := 1; n <= 8; n++ {
		got = append(got, o.backoff(n))
	}
	want := []time.Duration{100, 200, 400, 800, 1600, 3200, 5000, 5000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("backoff = %v, want %v ms", got, want)
		}
	}
	if d := (WebhookOptions{BaseBackoff: time.Second, MaxBackoff: time.Hour}).backoff(1 << 20); d != time.Hour {
		t.Errorf("a huge attempt number gives %v, want the cap (and no overflow)", d)
	}
}

// Whatever the timing, each event ends in exactly one outcome: the counts
// add up, and -race watches Send against Stop.
func TestWebhookCountsEveryEventOnce(t *testing.T) {
	rc := &recorder{}
	m := NewMetrics()
	w := NewWebhook(tcpTarget(t, rc), WebhookOptions{QueueSize: 16}, m)
	const senders, each = 4, 250
	var wg sync.WaitGroup
	for range senders {
		wg.Go(func() {
			for range each {
				w.Send(seedEvent())
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	time.Sleep(time.Millisecond)
	w.Stop(ctx)
	wg.Wait()
	results := map[string]float64{}
	var sum float64
	for _, r := range []string{resultSent, resultDropped, resultFailed, resultAbandoned} {
		results[r] = webhookResult(t, m, r)
		sum += results[r]
	}
	t.Logf("outcomes: %v", results)
	if sum != senders*each {
		t.Errorf("outcomes add up to %v, want %d", sum, senders*each)
	}
	// A response cut off by Stop leaves one received but counted abandoned.
	if got := float64(len(rc.requests())); got < results[resultSent] || got > results[resultSent]+1 {
		t.Errorf("received %v, counted %v sent", got, results[resultSent])
	}
}

func TestNewWebhookWithoutMetrics(t *testing.T) {
	rc := &recorder{}
	w := NewWebhook(tcpTarget(t, rc), WebhookOptions{}, nil)
	w.Send(seedEvent())
	w.Stop(context.Background())
	if n := len(rc.requests()); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}
