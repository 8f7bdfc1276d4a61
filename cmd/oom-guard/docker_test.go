package main

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/testenv"
)

// The end-to-end tests with real Docker: a container whose PID 1 is a
// shell and whose child allocates past the container's limit (seed 003).
// The child waits for /tmp/go so that the guard is watching before it
// starts; busybox's dd with a 200 MiB block allocates and touches 200 MiB.
const seed003Script = `while [ ! -e /tmp/go ]; do sleep 0.05; done; dd if=/dev/zero of=/dev/null bs=200M count=1; sleep 3600`

// container is a running seed-003 container and the guard watching it.
type container struct {
	docker *testenv.Docker
	id     string
	cgroup string // absolute path of its memory cgroup
	hook   *received
	guard  *daemon
	port   int // the guard's /metrics
}

// startSeed003 runs the container, then the guard over its cgroup only,
// with the given flags, POSTing events to a test webhook.
func startSeed003(t *testing.T, guardArgs ...string) *container {
	t.Helper()
	d := testenv.RequireDocker(t)
	img := d.BusyboxImage(t)
	id := d.RunContainer(t, "--memory", "64m", "--memory-swap", "64m", img, "sh", "-c", seed003Script)
	c := &container{docker: d, id: id, cgroup: d.CgroupV1(t, id), hook: &received{ch: make(chan []byte, 20)}, port: freePort(t)}
	srv := httptest.NewServer(c.hook)
	t.Cleanup(srv.Close)
	args := append([]string{"--webhook-url=" + srv.URL + "/message", "--docker-socket=" + testenv.DockerSocket,
		"--cri-sockets=", "--v=3", "--logtostderr", "--port=" + itoa(c.port)}, guardArgs...)
	c.guard = startDaemon(t, c.cgroup, 1, nil, args...)
	return c
}

// trigger lets the container's child allocate.
func (c *container) trigger(t *testing.T) {
	t.Helper()
	c.docker.Run(t, "exec", c.id, "touch", "/tmp/go")
}

// waitEvent returns the first event with one of the reasons.
func (c *container) waitEvent(t *testing.T, timeout time.Duration, reasons ...event.Reason) event.Event {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case body := <-c.hook.ch:
			var ev event.Event
			if err := json.Unmarshal(body, &ev); err != nil {
				t.Fatalf("webhook body: %v\n%s", err, body)
			}
			for _, r := range reasons {
				if ev.Reason == r {
					return ev
				}
			}
		case <-deadline:
			t.Fatalf("no %v event within %v; the guard's log:\n%s", reasons, timeout, c.guard.stderr.String())
		}
	}
}

func (c *container) events(reason event.Reason) int {
	c.hook.mu.Lock()
	defer c.hook.mu.Unlock()
	n := 0
	for _, b := range c.hook.bodies {
		var ev event.Event
		if json.Unmarshal(b, &ev) == nil && ev.Reason == reason {
			n++
		}
	}
	return n
}

// counted asserts the guard's /metrics has each series at its value: one
// increment on the right series with the container's label, none on the
// others.
func (c *container) counted(t *testing.T, want map[string]int) {
	t.Helper()
	body := scrape(t, c.port, "/metrics")
	for series, n := range want {
		if line := series + " " + itoa(n); !strings.Contains(body, "\n"+line+"\n") {
			t.Errorf("/metrics lacks %q", line)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", grepLines(body, "oomguard_"))
	}
}

// kills is the series of a kill of reason in container name (no pod).
func kills(metric string, reason event.Reason, name string) string {
	return metric + `{container="` + name + `",namespace="",pod="",reason="` + string(reason) + `"}`
}

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func (c *container) state(t *testing.T) string {
	return c.docker.Inspect(t, c.id, "{{.State.Status}} oomkilled={{.State.OOMKilled}} exit={{.State.ExitCode}}")
}

// checkChildOOM asserts the seed-003 event: the child (dd, not the
// container's init) named with its container, the container still running
// and Docker none the wiser.
func checkChildOOM(t *testing.T, c *container, ev event.Event) {
	t.Helper()
	name := strings.TrimPrefix(c.docker.Inspect(t, c.id, "{{.Name}}"), "/")
	initPid := c.docker.Inspect(t, c.id, "{{.State.Pid}}")
	if ev.ContainerID != c.id || ev.ContainerName != name || ev.Runtime != "docker" {
		t.Errorf("identity %+v, want container %s (%s) of docker", ev.Identity, name, c.id)
	}
	if len(ev.Processes) != 1 || ev.Processes[0].Comm != "dd" || ev.Processes[0].Pid <= 0 || initPid == "" ||
		ev.Processes[0].Pid == atoi(initPid) || !strings.HasPrefix(ev.Killed, itoa(ev.Processes[0].Pid)+"(dd) ") {
		t.Errorf("victim %+v (killed %q), want the child dd, not init pid %s", ev.Processes, ev.Killed, initPid)
	}
	if ev.ProcCgroup != c.cgroup || ev.Policy != "Kernel" || !strings.Contains(ev.Message, "keeps running") {
		t.Errorf("event %+v", ev)
	}
	if got := c.state(t); got != "running oomkilled=false exit=0" {
		t.Errorf("docker says %q, want the container running and not OOMKilled (seed 003)", got)
	}
	// One kill, one event, one count: the cgroup counter and the kernel
	// log agreed.
	time.Sleep(500 * time.Millisecond)
	if n := c.events(event.ChildOOM) + c.events(event.CgroupOOM); n != 1 {
		t.Errorf("%d kernel OOM events for one kill", n)
	}
	c.counted(t, map[string]int{
		kills("oomguard_kernel_oom_kills_total", event.ChildOOM, name):                                       1,
		`oomguard_kernel_oom_kills_total{container="",namespace="",pod="",reason="CgroupOOM"}`:               0,
		`oomguard_kernel_oom_kills_total{container="",namespace="",pod="",reason="ContainerChildOOMKilled"}`: 0,
	})
}

// Seed 003: the kernel kills the shell's child, the container runs on,
// Docker says OOMKilled=false, and the guard (noop) reports it.
func TestDockerChildOOMReported(t *testing.T) {
	c := startSeed003(t, "--policy=noop")
	c.trigger(t)
	ev := c.waitEvent(t, 20*time.Second, event.ChildOOM, event.CgroupOOM)
	if ev.Reason != event.ChildOOM {
		t.Fatalf("reason %s, want %s: %+v", ev.Reason, event.ChildOOM, ev)
	}
	checkChildOOM(t, c, ev)
	if ev.Processes[0].AnonRSSKB < 32<<10 {
		t.Errorf("victim's anon-rss at death %d kB: want the kernel's figure, tens of MiB", ev.Processes[0].AnonRSSKB)
	}
}

// The same with the kernel log unreadable: the cgroup counters and the
// processes seen before the kill name the child on their own.
func TestDockerChildOOMWithoutKernelLog(t *testing.T) {
	c := startSeed003(t, "--policy=noop", "--kmsg=/nonexistent/kmsg")
	c.trigger(t)
	ev := c.waitEvent(t, 20*time.Second, event.ChildOOM, event.CgroupOOM)
	if ev.Reason != event.ChildOOM {
		t.Fatalf("reason %s, want %s: %+v", ev.Reason, event.ChildOOM, ev)
	}
	checkChildOOM(t, c, ev)
	if !strings.Contains(c.guard.stderr.String(), "/nonexistent/kmsg") {
		t.Errorf("the guard did not say the kernel log was unreadable")
	}
}

// --kill-container-on-child-oom: the container the kernel took a child from
// is stopped whole (through Docker), so its orchestrator restarts it.
func TestDockerKillContainerOnChildOOM(t *testing.T) {
	c := startSeed003(t, "--policy=noop", "--kill-container-on-child-oom")
	c.trigger(t)
	child := c.waitEvent(t, 20*time.Second, event.ChildOOM)
	// The stop is an action of its own, reported with why.
	ev := c.waitEvent(t, 20*time.Second, event.KillContainer)
	if ev.ContainerID != c.id || ev.ProcCgroup != c.cgroup || ev.Policy != "Container" ||
		!strings.Contains(ev.Message, "after the kernel OOM-killed its child dd (pid "+itoa(child.Processes[0].Pid)) ||
		!strings.Contains(ev.Message, "--kill-container-on-child-oom") {
		t.Errorf("container stop event %+v", ev)
	}
	// Docker now says OOMKilled: containerd sets it on any exit once the
	// cgroup has seen an OOM kill (kubernetes#140716) — here, rightly.
	waitState(t, c, "exited oomkilled=true exit=137", 10*time.Second)
	name := strings.TrimPrefix(c.docker.Inspect(t, c.id, "{{.Name}}"), "/")
	c.counted(t, map[string]int{
		kills("oomguard_kernel_oom_kills_total", event.ChildOOM, name): 1,
		kills("oomguard_actions_total", event.KillContainer, name):     1,
	})
}

// policyMargins widen the margin for the tests of what a policy does: dd's
// 200 MiB buffer faults in 2 MiB huge pages, so at the default margins a
// 64 MiB container leaves the guard two or three faults (a few hundred
// microseconds) to win. Who wins that race, and how often, is the
// benchmark's to measure; these tests check what the guard does when it acts.
var policyMargins = []string{"--min-margin=16", "--max-margin=30"}

// The container policy stops the container through Docker, which records
// the exit; the kernel never OOM-kills.
func TestDockerContainerPolicyStopsContainer(t *testing.T) {
	c := startSeed003(t, append(policyMargins, "--policy=container")...)
	c.trigger(t)
	ev := c.waitEvent(t, 20*time.Second, event.KillContainer)
	waitState(t, c, "exited oomkilled=false exit=137", 10*time.Second)
	if ev.ContainerID != c.id || ev.ProcCgroup != c.cgroup || !strings.Contains(ev.Killed, "(dd) ") {
		t.Errorf("event %+v", ev)
	}
	// oomkilled=false above: Docker saw no kernel OOM in the container
	// (its cgroup, with the kernel's counter, is gone with it).
	if ev.Stats == "" {
		t.Errorf("event without memory.stat: %+v", ev)
	}
	if !strings.Contains(c.guard.stderr.String(), "stopped through its runtime") {
		t.Errorf("the container was not stopped through Docker:\n%s", c.guard.stderr.String())
	}
}

// The process policy kills the allocating child only: the container lives.
func TestDockerProcessPolicyKillsOnlyTheHog(t *testing.T) {
	c := startSeed003(t, append(policyMargins, "--policy=process")...)
	c.trigger(t)
	ev := c.waitEvent(t, 20*time.Second, event.KillProcess)
	if len(ev.Processes) != 1 || ev.Processes[0].Comm != "dd" || ev.ContainerID != c.id {
		t.Fatalf("event %+v", ev)
	}
	time.Sleep(300 * time.Millisecond)
	if got := c.state(t); got != "running oomkilled=false exit=0" {
		t.Fatalf("docker says %q, want the container running", got)
	}
	if n := kernelOOMKillsAbs(t, c.cgroup); n != 0 {
		t.Errorf("the kernel OOM-killed %d processes", n)
	}
}

func waitState(t *testing.T, c *container, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := c.state(t)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker says %q after %v, want %q; the guard's log:\n%s", got, timeout, want, c.guard.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func kernelOOMKillsAbs(t *testing.T, abs string) uint64 {
	t.Helper()
	return kernelOOMKills(t, strings.TrimPrefix(abs, testenv.V1MemoryRoot))
}
