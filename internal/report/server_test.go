package report

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/event"
)

func startServer(t *testing.T, m *Metrics, healthy func() error) *Server {
	t.Helper()
	s := NewServer("127.0.0.1:0", m, healthy)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	return s
}

func get(t *testing.T, method, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestServerHealthz(t *testing.T) {
	for _, tc := range []struct {
		name    string
		healthy func() error
		method  string
		code    int
		body    string
	}{
		{"healthy", func() error { return nil }, "GET", 200, "ok\n"},
		{"no check", nil, "GET", 200, "ok\n"},
		{"unhealthy", func() error { return errors.New("notifier: inotify: too many open files") }, "GET", 503, "notifier: inotify: too many open files\n"},
		{"wrong method", nil, "POST", 405, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServer(t, NewMetrics(), tc.healthy)
			code, body := get(t, tc.method, "http://"+s.Addr()+"/healthz")
			if code != tc.code || (tc.body != "" && body != tc.body) {
				t.Errorf("got %d %q, want %d %q", code, body, tc.code, tc.body)
			}
		})
	}
}

func TestServerMetrics(t *testing.T) {
	m := NewMetrics()
	s := startServer(t, m, nil)
	m.SetGuarded(7)
	m.SetGuarded(3)
	m.Crossing()
	m.Crossing()
	m.StandDown("reclaimable-cache")
	m.HoldWait()
	m.Event(event.Event{Reason: event.KillContainer, Reaction: 300 * time.Microsecond})
	m.Event(event.Event{Reason: event.WouldKill}) // not measured: kept out of the histogram
	m.Event(event.Event{Reason: event.CgroupOOM})
	m.Event(event.Event{Reason: event.ChildOOM, Identity: event.Identity{PodNamespace: "shop", PodName: "web-0", ContainerName: "app"}})
	m.CountDropped("reconcile", func() uint64 { return 4 })
	m.webhookEvent(resultSent)
	m.webhookFailedAttempt()

	code, body := get(t, "GET", "http://"+s.Addr()+"/metrics")
	if code != 200 {
		t.Fatalf("GET /metrics: %d\n%s", code, body)
	}
	for _, want := range []string{
		"oomguard_guarded_cgroups 3",
		"oomguard_threshold_crossings_total 2",
		`oomguard_stand_downs_total{reason="reclaimable-cache"} 1`,
		"oomguard_hold_waits_total 1",
		`oomguard_faults_total{kind="hold"} 0`,
		`oomguard_actions_total{container="",namespace="",pod="",reason="OomGuardKillContainer"} 1`,
		`oomguard_actions_total{container="",namespace="",pod="",reason="OomGuardWouldKill"} 1`,
		`oomguard_actions_total{container="",namespace="",pod="",reason="OomGuardKillProcess"} 0`,
		`oomguard_reaction_seconds_bucket{le="0.00025"} 0`,
		`oomguard_reaction_seconds_bucket{le="0.0005"} 1`,
		`oomguard_reaction_seconds_bucket{le="0.001"} 1`,
		"oomguard_reaction_seconds_count 1",
		"oomguard_reaction_seconds_sum 0.0003",
		`oomguard_kernel_oom_kills_total{container="",namespace="",pod="",reason="CgroupOOM"} 1`,
		`oomguard_kernel_oom_kills_total{container="",namespace="",pod="",reason="SystemOOM"} 0`,
		`oomguard_kernel_oom_kills_total{container="app",namespace="shop",pod="web-0",reason="ContainerChildOOMKilled"} 1`,
		`oomguard_events_dropped_total{stage="reconcile"} 4`,
		`oomguard_faults_total{kind="registration"} 0`,
		"oomguard_unguarded_cgroups 0",
		"oomguard_workload_series_folded_total 0",
		`oomguard_webhook_events_total{result="sent"} 1`,
		`oomguard_webhook_events_total{result="dropped"} 0`,
		"oomguard_webhook_failed_attempts_total 1",
		"go_goroutines ",
		"process_start_time_seconds ",
	} {
		if !strings.Contains(body, "\n"+want) {
			t.Errorf("no %q in /metrics", want)
		}
	}
	if t.Failed() {
		t.Log(body)
	}
}

// main turns Start's error into a clear exit; a busy port must not be
// found only later, in a goroutine's log.
func TestServerStartBusyPort(t *testing.T) {
	first := startServer(t, NewMetrics(), nil)
	second := NewServer(first.Addr(), NewMetrics(), nil)
	err := second.Start()
	if err == nil {
		_ = second.Shutdown(context.Background())
		t.Fatal("second Start on the same port succeeded")
	}
	if !strings.Contains(err.Error(), first.Addr()) {
		t.Errorf("error %q does not name %s", err, first.Addr())
	}
}

func TestServerShutdown(t *testing.T) {
	s := startServer(t, NewMetrics(), nil)
	addr := s.Addr()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
		resp.Body.Close()
		t.Error("still serving after Shutdown")
	}
	// Shutdown of a server never started is what main does when --port is
	// busy and it bails out; it must be harmless.
	if err := NewServer("127.0.0.1:0", nil, nil).Shutdown(ctx); err != nil {
		t.Error(err)
	}
}
