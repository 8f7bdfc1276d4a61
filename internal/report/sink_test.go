package report

import (
	"bytes"
	"flag"
	"strings"
	"testing"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/event"
)

type sinkFunc func(event.Event)

func (f sinkFunc) Send(ev event.Event) { f(ev) }

func TestFanout(t *testing.T) {
	var got []string
	rec := func(name string) Sink {
		return sinkFunc(func(ev event.Event) { got = append(got, name+":"+ev.Hostname) })
	}
	// main builds the list conditionally; a nil in it must not crash the guard.
	Fanout(rec("a"), nil, rec("b")).Send(event.Event{Hostname: "n1"})
	if want := "a:n1 b:n1"; strings.Join(got, " ") != want {
		t.Errorf("got %v, want %s", got, want)
	}
	Fanout().Send(event.Event{})
}

func TestLogLine(t *testing.T) {
	for _, tc := range []struct {
		name string
		ev   event.Event
		want string
	}{
		{"the message, after the reason", event.Event{
			Reason: event.KillContainer, Message: "oom-guard killed the container in container app (fakeOOM (pid 16481)) [pod shop/web-0, cgroup /k/p]",
			Identity: event.Identity{Runtime: "containerd", ContainerID: "223d47", ContainerName: "app", PodName: "web-0", PodNamespace: "shop"},
		}, "OomGuardKillContainer: oom-guard killed the container in container app (fakeOOM (pid 16481)) [pod shop/web-0, cgroup /k/p]"},
		// A process may name itself anything; the log stays one line per event.
		{"newline in a name", event.Event{Reason: event.KillProcess, Message: "killed 9(evil\nFAKE LINE) "},
			`OomGuardKillProcess: killed 9(evil\nFAKE LINE) `},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := logLine(tc.ev); got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

// At the seed's --v=2 an event is one readable line; the JSON is for
// whoever turns the verbosity up.
func TestLogSinkVerbosity(t *testing.T) {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	var buf bytes.Buffer
	klog.LogToStderr(false)
	klog.SetOutput(&buf)
	t.Cleanup(func() {
		_ = fs.Set("v", "0")
		klog.SetOutput(nil)
		klog.LogToStderr(true)
	})
	ev := seedEvent()
	ev.Message = "killed container of 16481(fakeOOM) "
	for _, tc := range []struct {
		v        string
		wantJSON bool
	}{{"2", false}, {"3", true}} {
		buf.Reset()
		if err := fs.Set("v", tc.v); err != nil {
			t.Fatal(err)
		}
		NewLog().Send(ev)
		klog.Flush()
		out := buf.String()
		if !strings.Contains(out, "OomGuardKillContainer: killed container of 16481(fakeOOM)") {
			t.Errorf("--v=%s: no readable line in %q", tc.v, out)
		}
		if got := strings.Contains(out, `"oomcgroup":`); got != tc.wantJSON {
			t.Errorf("--v=%s: JSON logged = %v, want %v:\n%s", tc.v, got, tc.wantJSON, out)
		}
	}
}
