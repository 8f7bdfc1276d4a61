package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/guard"
	"github.com/oom-guard/oom-guard/internal/notify"
	"github.com/oom-guard/oom-guard/internal/reconcile"
	"github.com/oom-guard/oom-guard/internal/testenv"
)

// guardBin is the oom-guard binary built once for the end-to-end tests.
var guardBin string

func TestMain(m *testing.M) {
	testenv.RunHogIfRequested()
	dir, err := os.MkdirTemp("", "oomguard-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	guardBin = filepath.Join(dir, "oom-guard")
	build := exec.Command("go", "build", "-o", guardBin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build oom-guard: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	testenv.Cleanup()
	os.RemoveAll(dir)
	os.Exit(code)
}

// seedArgs is the args list of the seed's DaemonSet (seed 000), verbatim.
var seedArgs = []string{
	"--v=2", "--logtostderr", "--root=/sys/fs/cgroup/memory",
	"--walkIntervalSeconds=277", "--inotifyResetSeconds=701", "--port=0",
	"--margin-ratio=0.02", "--min-margin=1", "--max-margin=30", "--guard-ms=50",
	"--policy=container", "--openSoftLimit=false", "--webhook-url=http://localhost/message",
}

func TestSeedArgsParse(t *testing.T) {
	o, err := parseFlags(seedArgs, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	g := o.guard
	if o.root != "/sys/fs/cgroup/memory" || o.port != 0 || o.webhookURL != "http://localhost/message" ||
		g.Policy != guard.PolicyContainer || g.MarginRatio != 0.02 || g.MinMargin != 1<<20 || g.MaxMargin != 30<<20 ||
		g.GuardInterval != 50*time.Millisecond || g.WalkInterval != 277*time.Second || g.InotifyReset != 701*time.Second ||
		g.OpenSoftLimit {
		t.Fatalf("seed args read as %+v, guard %+v", o, g)
	}
}

// Every bad value ends the program at once: exit status 2, one line saying why.
func TestBadFlagsExit2(t *testing.T) {
	notCgroup := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string // in the message
	}{
		{[]string{"--margin-ratio=0"}, "margin ratio"},
		{[]string{"--margin-ratio=1"}, "margin ratio"},
		{[]string{"--margin-ratio=-0.5"}, "margin ratio"},
		{[]string{"--margin-ratio=abc"}, "margin-ratio"},
		{[]string{"--min-margin=40", "--max-margin=30"}, "min margin"},
		{[]string{"--max-margin=0"}, "max-margin"},
		{[]string{"--policy=reboot"}, "unknown policy"},
		{[]string{"--nice=-21"}, "nice"},
		{[]string{"--nice=20"}, "nice"},
		{[]string{"--v1-charging-cpus=0"}, "v1-charging-cpus"},
		{[]string{"--v1-charging-cpus=-3"}, "v1-charging-cpus"},
		{[]string{"--policy="}, "unknown policy"},
		{[]string{"--webhook-url=ftp://host/x"}, "webhook-url"},
		{[]string{"--webhook-url=http://"}, "webhook-url"},
		{[]string{"--webhook-url=://nothing"}, "webhook-url"},
		{[]string{"--webhook-url=unix://"}, "webhook-url"},
		{[]string{"--walkIntervalSeconds=0"}, "walkIntervalSeconds"},
		{[]string{"--inotifyResetSeconds=-1"}, "inotifyResetSeconds"},
		{[]string{"--guard-ms=-5"}, "guard-ms"},
		{[]string{"--port=70000"}, "port"},
		{[]string{"--rt-priority=100"}, "real-time priority"},
		{[]string{"--rt-others=2"}, "rt-others"}, // not below the loop's default 2
		{[]string{"--rt-priority=5", "--rt-others=7"}, "rt-others"},
		{[]string{"--rt-others=-1"}, "rt-others"},
		{[]string{"--no-such-flag"}, "no-such-flag"},
		{[]string{"stray"}, "unexpected argument"},
		{[]string{"--root=" + notCgroup}, "not a cgroup"},
		{[]string{"--root=/nonexistent/oom-guard"}, "no such file"},
		{[]string{"--root=/nonexistent/oom-guard,/nonexistent/oom-guard.slice"}, "none of /nonexistent/oom-guard, /nonexistent/oom-guard.slice exists"},
		{[]string{"--root=/proc"}, "not a cgroup"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stderr bytes.Buffer
			args := append([]string{"--port=0", "--webhook-url="}, tc.args...)
			if !hasRoot(tc.args) {
				// Flags are checked before the root is opened: the root is never used.
				args = append([]string{"--root=/sys/fs/cgroup/memory"}, args...)
			}
			if code := run(args, &stderr); code != 2 {
				t.Fatalf("exit %d, want 2; stderr %q", code, stderr.String())
			}
			msg := stderr.String()
			if strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, "oom-guard: ") || !strings.Contains(msg, tc.want) {
				t.Fatalf("message %q: want one line naming %q", msg, tc.want)
			}
		})
	}
}

func hasRoot(args []string) bool {
	for _, a := range args {
		if strings.HasPrefix(a, "--root=") {
			return true
		}
	}
	return false
}

// received collects what a webhook server was sent.
type received struct {
	mu     sync.Mutex
	bodies [][]byte
	ch     chan []byte
}

func (r *received) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	if req.Method != http.MethodPost || req.URL.Path != "/message" || req.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.bodies = append(r.bodies, body)
	r.mu.Unlock()
	select {
	case r.ch <- body:
	default:
	}
}

// daemon is a running oom-guard binary.
type daemon struct {
	cmd    *exec.Cmd
	stderr *lockedBuffer
	exited chan struct{}
}

// guardPid is the pid of the guard itself: the child of the keeper where
// the binary keeps its guard (keeper.go), else the process started.
func (d *daemon) guardPid(t *testing.T) int {
	t.Helper()
	pid := d.cmd.Process.Pid
	if !strings.Contains(d.stderr.String(), "keeper: the guard runs as pid ") {
		return pid
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		t.Fatalf("the keeper's child: %v", err)
	}
	f := strings.Fields(string(data))
	if len(f) != 1 {
		t.Fatalf("the keeper %d has children %q, want its guard alone", pid, f)
	}
	child, err := strconv.Atoi(f[0])
	if err != nil {
		t.Fatal(err)
	}
	return child
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startDaemon runs the binary over root (the test's own cgroup sub-tree) only and
// waits until it has guarded `guarded` cgroups (from its log). It is
// stopped with SIGTERM at the end of the test.
func startDaemon(t *testing.T, root string, guarded int, env []string, args ...string) *daemon {
	t.Helper()
	cmd := exec.Command(guardBin, append(args, "--root="+root)...)
	cmd.Env = append(os.Environ(), env...)
	return startDaemonCmd(t, cmd, guarded)
}

// startDaemonCmd starts cmd, which execs the binary, as startDaemon does.
func startDaemonCmd(t *testing.T, cmd *exec.Cmd, guarded int) *daemon {
	t.Helper()
	return startDaemonUntil(t, cmd, fmt.Sprintf("guarding %d of ", guarded))
}

// ownStateFile gives the binary cmd execs (last, with its arguments at the
// end) a state file of the test's own unless it names one: the default,
// the node's /run/oom-guard, belongs to a guard the host may run.
func ownStateFile(t *testing.T, cmd *exec.Cmd) {
	for _, a := range cmd.Args {
		if strings.HasPrefix(a, "--state-file") {
			return
		}
	}
	cmd.Args = append(cmd.Args, "--state-file="+filepath.Join(t.TempDir(), "state.jsonl"))
}

// startDaemonUntil starts cmd, which execs the binary, and waits until its
// log says want.
func startDaemonUntil(t *testing.T, cmd *exec.Cmd, want string) *daemon {
	t.Helper()
	ownStateFile(t, cmd)
	d := &daemon{cmd: cmd, stderr: &lockedBuffer{}, exited: make(chan struct{})}
	cmd.Stderr = d.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-d.exited
			t.Errorf("oom-guard did not stop on SIGTERM within 10s")
		}
		if t.Failed() {
			t.Logf("oom-guard's log:\n%s", d.stderr.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(d.stderr.String(), want) {
		select {
		case <-d.exited:
			t.Fatalf("oom-guard exited at start: %v\n%s", cmd.ProcessState, d.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("oom-guard's log does not say %q within 10s:\n%s", want, d.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return d
}

// stop sends SIGTERM and returns the exit status.
func (d *daemon) stop(t *testing.T) int {
	t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("oom-guard did not stop on SIGTERM within 10s")
	}
	return d.cmd.ProcessState.ExitCode()
}

func kernelOOMKills(t *testing.T, rel string) uint64 {
	t.Helper()
	return testenv.KernelOOMKills(t, rel)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// The binary kills a fast allocator before the kernel does, POSTs the
// seed's JSON to the webhook, counts it in /metrics, and on SIGTERM stops
// cleanly with the soft limits it set put back.
func TestBinaryKillsReportsAndStops(t *testing.T) {
	cg := testenv.NewCgroup(t)
	const limit = 64 << 20
	rel := cg.Child(t, "app", limit)
	mem, err := cgroup.Open(testenv.V1MemoryRoot)
	if err != nil {
		t.Fatal(err)
	}
	softBefore, err := mem.SoftLimit(rel)
	if err != nil {
		t.Fatal(err)
	}
	hook := &received{ch: make(chan []byte, 10)}
	srv := httptest.NewServer(hook)
	defer srv.Close()
	port := freePort(t)
	d := startDaemon(t, cg.Mem.Path(cg.Rel, ""), 1, []string{"NODE_NAME=node-under-test"},
		"--policy=process", "--openSoftLimit=true", "--port="+strconv.Itoa(port),
		"--min-margin=16", "--max-margin=30", // the binary's reporting under test, not the race
		"--webhook-url="+srv.URL+"/message", "--v=2", "--logtostderr")

	cfg := guard.DefaultConfig()
	cfg.ThresholdLag = notify.V1Notifier{}.ThresholdLag() // the binary's v1 margins
	cfg.MinMargin, cfg.MaxMargin = 16<<20, 30<<20
	// The kernel rounds a soft limit down to whole pages.
	page := uint64(os.Getpagesize())
	if got, _ := mem.SoftLimit(rel); got != cfg.Threshold(limit)/page*page {
		t.Fatalf("soft limit %d while guarded, want the threshold %d", got, cfg.Threshold(limit))
	}
	hog := testenv.HogCommand(testenv.HogSpec{MiB: 0})
	cg.Start(t, rel, hog)
	var body []byte
	select {
	case body = <-hook.ch:
	case <-time.After(15 * time.Second):
		t.Fatal("no webhook POST within 15s")
	}
	if ws := testenv.WaitExit(t, hog, 5*time.Second); ws.Signal() != syscall.SIGKILL {
		t.Fatalf("hog ended with %v", ws)
	}
	if n := kernelOOMKills(t, rel); n != 0 {
		t.Fatalf("the kernel OOM-killed %d processes: the guard lost the race", n)
	}
	checkSeedJSON(t, body, map[string]any{
		"hostname":   "node-under-test",
		"oomcgroup":  cg.Path("app"),
		"proccgroup": cg.Path("app"),
		"threshold":  float64(cfg.Threshold(limit)),
		"policy":     "Process",
		"reason":     "OomGuardKillProcess",
	}, hog.Process.Pid)

	metrics := scrape(t, port, "/metrics")
	for _, want := range []string{
		`oomguard_guarded_cgroups 1`,
		`oomguard_actions_total{container="",namespace="",pod="",reason="OomGuardKillProcess"} 1`,
		`oomguard_reaction_seconds_count 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	gpid := d.guardPid(t)
	if n := fifoThreads(t, gpid); n != 1 {
		t.Errorf("%d threads under SCHED_FIFO, want the decision loop's alone (--rt-priority)", n)
	}
	if all, n := threadCount(t, gpid), rrThreads(t, gpid); n != all-1 {
		t.Errorf("%d of %d threads under SCHED_RR, want all but the loop (--rt-others)", n, all)
	}
	if all, n := threadCount(t, gpid), niceThreads(t, gpid, -20); n != all {
		t.Errorf("%d of %d threads at nice -20 (--nice's default)", n, all)
	}
	if h := scrape(t, port, "/healthz"); strings.TrimSpace(h) != "ok" {
		t.Errorf("/healthz says %q", h)
	}

	if code := d.stop(t); code != 0 {
		t.Fatalf("exit status %d after SIGTERM:\n%s", code, d.stderr.String())
	}
	if got, _ := mem.SoftLimit(rel); got != softBefore {
		t.Fatalf("soft limit %d after stop, want %d restored", got, softBefore)
	}
}

// A kernel OOM kill that the cgroup's counter and the kernel log both
// report is one event and one count, under its reason; the noop policy's
// would-be kill before it is one more, of its own. The margin is one the
// look cannot miss (16 MiB): at the seed's 1.28 MiB a hog at full speed
// can reach the limit before the kernel's v1 notification comes (once in
// a CI run), and a would-be kill looked for after the kernel's is none.
func TestBinaryCountsAKernelKillOnce(t *testing.T) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "app", 64<<20)
	hook := &received{ch: make(chan []byte, 10)}
	srv := httptest.NewServer(hook)
	defer srv.Close()
	port := freePort(t)
	startDaemon(t, cg.Mem.Path(cg.Rel, ""), 1, nil, "--policy=noop", "--min-margin=16", "--port="+strconv.Itoa(port),
		"--webhook-url="+srv.URL+"/message", "--docker-socket=", "--cri-sockets=", "--v=2", "--logtostderr")
	hog := testenv.HogCommand(testenv.HogSpec{MiB: 0})
	cg.Start(t, rel, hog)
	if ws := testenv.WaitExit(t, hog, 15*time.Second); ws.Signal() != syscall.SIGKILL {
		t.Fatalf("hog ended with %v", ws)
	}
	if n := kernelOOMKills(t, rel); n != 1 {
		t.Fatalf("the kernel OOM-killed %d processes, want 1", n)
	}
	deadline := time.After(10 * time.Second)
	var reasons []string
	for len(reasons) < 2 {
		select {
		case body := <-hook.ch:
			var ev event.Event
			if err := json.Unmarshal(body, &ev); err != nil {
				t.Fatal(err)
			}
			reasons = append(reasons, string(ev.Reason))
			if ev.Reason == event.CgroupOOM && (len(ev.Processes) != 1 || ev.Processes[0].Pid != hog.Process.Pid || ev.Processes[0].AnonRSSKB == 0) {
				t.Errorf("CgroupOOM event %+v: want the hog, with the kernel log's anon-rss", ev)
			}
		case <-deadline:
			t.Fatalf("events %v within 10s, want OomGuardWouldKill and CgroupOOM", reasons)
		}
	}
	time.Sleep(2 * reconcile.DefaultWindow) // anything more would have come by now
	hook.mu.Lock()
	n := len(hook.bodies)
	hook.mu.Unlock()
	if n != 2 {
		t.Errorf("%d events for one would-be kill and one kernel kill: %v", n, reasons)
	}
	metrics := scrape(t, port, "/metrics")
	for _, want := range []string{
		`oomguard_actions_total{container="",namespace="",pod="",reason="OomGuardWouldKill"} 1`,
		`oomguard_kernel_oom_kills_total{container="",namespace="",pod="",reason="CgroupOOM"} 1`,
		`oomguard_kernel_oom_kills_total{container="",namespace="",pod="",reason="ContainerChildOOMKilled"} 0`,
		`oomguard_events_dropped_total{stage="reconcile"} 0`,
	} {
		if !strings.Contains(metrics, "\n"+want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// checkSeedJSON asserts body carries the seed's nine fields (seed 000) with
// the seed's types, the given values, and pid as the killed process.
func checkSeedJSON(t *testing.T, body []byte, want map[string]any, pid int) {
	t.Helper()
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("webhook body is not JSON: %v\n%s", err, body)
	}
	for _, k := range []string{"hostname", "timestamp", "oomcgroup", "proccgroup", "killed", "stats", "policy"} {
		if _, ok := got[k].(string); !ok {
			t.Errorf("field %q: %v is not a string", k, got[k])
		}
	}
	for _, k := range []string{"threshold", "usage"} {
		if _, ok := got[k].(float64); !ok {
			t.Errorf("field %q: %v is not a number", k, got[k])
		}
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("field %q = %v, want %v", k, got[k], v)
		}
	}
	if ts, err := time.Parse(time.RFC3339Nano, fmt.Sprint(got["timestamp"])); err != nil || time.Since(ts) > time.Minute {
		t.Errorf("timestamp %v: %v", got["timestamp"], err)
	}
	if killed := fmt.Sprint(got["killed"]); !regexp.MustCompile(`^` + strconv.Itoa(pid) + `\([^)]+\) $`).MatchString(killed) {
		t.Errorf("killed %q, want %q", killed, strconv.Itoa(pid)+"(COMM) ")
	}
	if stats := fmt.Sprint(got["stats"]); !strings.Contains(stats, "|rss ") && !strings.HasPrefix(stats, "cache ") || !strings.HasSuffix(stats, "|") {
		t.Errorf("stats %q: want memory.stat as key value|...|", stats)
	}
	if usage, _ := got["usage"].(float64); usage < got["threshold"].(float64) {
		t.Errorf("usage %v below threshold %v", usage, got["threshold"])
	}
	if t.Failed() {
		t.Logf("body: %s", body)
	}
}

func scrape(t *testing.T, port int, path string) string {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// The seed DaemonSet's args, copied as is (only --root narrowed to this
// test's sub-tree), start the guard, and its container policy works even
// though nothing listens at the seed's webhook URL.
func TestSeedArgsStartTheGuard(t *testing.T) {
	cg := testenv.NewCgroup(t)
	args := make([]string, 0, len(seedArgs))
	for _, a := range seedArgs {
		if !strings.HasPrefix(a, "--root=") {
			args = append(args, a)
		}
	}
	// At the seed's margins a race can be lost on a loaded machine (the
	// rate is bench/preempt's to measure): up to three, each in a cgroup
	// of its own, and the guard must win one.
	const races = 3
	var rels []string
	for race := 1; race <= races; race++ {
		rels = append(rels, cg.Child(t, fmt.Sprint("pod", race), 64<<20))
	}
	d := startDaemon(t, cg.Mem.Path(cg.Rel, ""), races, nil, args...)
	for race := 1; ; race++ {
		rel := rels[race-1]
		idle := testenv.HogCommand(testenv.HogSpec{Kind: "sleep"})
		cg.Start(t, rel, idle)
		hog := testenv.HogCommand(testenv.HogSpec{MiB: 0})
		cg.Start(t, rel, hog)
		testenv.WaitExit(t, hog, 15*time.Second)
		testenv.WaitExit(t, idle, 5*time.Second)
		n := kernelOOMKills(t, rel)
		if n == 0 {
			break
		}
		if race == races {
			t.Fatalf("the kernel OOM-killed %d processes, in each of %d races", n, races)
		}
		t.Logf("race %d: the kernel OOM-killed %d processes; again", race, n)
	}
	if !waitLog(d, "OomGuardKillContainer", 5*time.Second) {
		t.Fatalf("no OomGuardKillContainer in the log:\n%s", d.stderr.String())
	}
}

func waitLog(d *daemon, s string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(d.stderr.String(), s) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// A webhook that accepts connections and never answers does not slow the
// guard down: one allocator after another is killed before the kernel can,
// while every POST hangs.
func TestHungWebhookDoesNotDelayKills(t *testing.T) {
	cg := testenv.NewCgroup(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() { _, _ = io.Copy(io.Discard, bufio.NewReader(c)) }() // read, never answer
		}
	}()
	defer func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	const hogs = 3
	var rels []string
	for i := 0; i < hogs; i++ {
		rels = append(rels, cg.Child(t, fmt.Sprintf("c%d", i), 64<<20))
	}
	port := freePort(t)
	// The webhook is under test, not the race: margins the kill cannot miss.
	startDaemon(t, cg.Mem.Path(cg.Rel, ""), hogs, nil, "--policy=process", "--port="+strconv.Itoa(port),
		"--min-margin=16", "--max-margin=30",
		"--webhook-url=http://"+l.Addr().String()+"/message", "--v=1", "--logtostderr")
	for i, rel := range rels {
		hog := testenv.HogCommand(testenv.HogSpec{MiB: 0})
		cg.Start(t, rel, hog)
		if ws := testenv.WaitExit(t, hog, 15*time.Second); ws.Signal() != syscall.SIGKILL {
			t.Fatalf("hog %d ended with %v", i, ws)
		}
		if n := kernelOOMKills(t, rel); n != 0 {
			t.Fatalf("hog %d: the kernel OOM-killed %d processes while the webhook hung", i, n)
		}
	}
	metrics := scrape(t, port, "/metrics")
	if want := fmt.Sprintf(`oomguard_actions_total{container="",namespace="",pod="",reason="OomGuardKillProcess"} %d`, hogs); !strings.Contains(metrics, want) {
		t.Fatalf("/metrics lacks %q", want)
	}
	mu.Lock()
	n := len(conns)
	mu.Unlock()
	if n == 0 {
		t.Fatal("the guard never tried the webhook")
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func atoi(s string) int {
	n, _ := strconv.Atoi(strings.TrimSpace(s))
	return n
}

// fifoThreads counts the process's threads under SCHED_FIFO (policy, field
// 41 of /proc/PID/task/TID/stat, is 1).
func fifoThreads(t *testing.T, pid int) int { return threadsWith(t, pid, 41, "1") }

// rrThreads counts the process's threads under SCHED_RR (policy 2).
func rrThreads(t *testing.T, pid int) int { return threadsWith(t, pid, 41, "2") }

// niceThreads counts the process's threads at the given nice value (field 19).
func niceThreads(t *testing.T, pid, nice int) int { return threadsWith(t, pid, 19, strconv.Itoa(nice)) }

// threadCount is how many threads the process has.
func threadCount(t *testing.T, pid int) int {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(tasks)
}

// threadsWith counts the process's threads whose /proc/PID/task/TID/stat
// field (numbered as in proc(5)) has the given value.
func threadsWith(t *testing.T, pid, field int, value string) int {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, task := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			continue
		}
		// Fields after the comm, which may hold spaces, start at 3.
		fields := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
		if len(fields) > field-3 && fields[field-3] == value {
			n++
		}
	}
	return n
}

// --kmsg-from-boot reports a kernel OOM kill that happened before the guard
// started, from the kernel's log buffer; without it, the guard starts at
// the log's end and reports nothing old.
func TestKmsgFromBoot(t *testing.T) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "before", 32<<20)
	hog := testenv.HogCommand(testenv.HogSpec{MiB: 0})
	cg.Start(t, rel, hog)
	if ws := testenv.WaitExit(t, hog, 15*time.Second); ws.Signal() != syscall.SIGKILL || kernelOOMKills(t, rel) != 1 {
		t.Fatalf("the kernel did not OOM-kill the hog: %v", ws)
	}
	for _, fromBoot := range []bool{false, true} {
		hook := &received{ch: make(chan []byte, 10)}
		srv := httptest.NewServer(hook)
		d := startDaemon(t, cg.Mem.Path(cg.Rel, ""), 1, nil, "--policy=noop", "--webhook-url="+srv.URL+"/message",
			"--docker-socket=", "--cri-sockets=", "--kmsg-from-boot="+strconv.FormatBool(fromBoot))
		var got []byte
		select {
		case got = <-hook.ch:
		case <-time.After(2 * time.Second):
		}
		d.stop(t)
		srv.Close()
		switch {
		case fromBoot && got == nil:
			t.Fatalf("--kmsg-from-boot: the earlier kill was not reported:\n%s", d.stderr.String())
		case fromBoot:
			checkKernelEvent(t, got, hog.Process.Pid, cg.Path("before"))
		case got != nil:
			t.Fatalf("without --kmsg-from-boot an old kill was reported: %s", got)
		}
	}
}

func checkKernelEvent(t *testing.T, body []byte, pid int, cgroup string) {
	t.Helper()
	var ev struct {
		Reason, ProcCgroup string
		Processes          []struct{ Pid int }
	}
	if err := json.Unmarshal(body, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Reason != "CgroupOOM" || ev.ProcCgroup != cgroup || len(ev.Processes) != 1 || ev.Processes[0].Pid != pid {
		t.Fatalf("event %s, want CgroupOOM of pid %d in %s", body, pid, cgroup)
	}
}

// Where the kernel refuses SCHED_FIFO (a container's cpu cgroup with no
// real-time budget: cpu.rt_runtime_us 0, the default for a new cgroup), the
// decision loop runs at nice -20 instead, the other threads keep their
// normal scheduling, and it says so.
func TestRealtimeRefusedFallsBackToNice(t *testing.T) {
	cg := testenv.NewCgroup(t)
	cpu := fmt.Sprintf("/sys/fs/cgroup/cpu/oomguard-test-rt-%d", os.Getpid())
	if err := os.Mkdir(cpu, 0o755); err != nil {
		testenv.Skip(t, "needs the v1 cpu controller: "+err.Error())
	}
	t.Cleanup(func() {
		if err := os.Remove(cpu); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if b, err := os.ReadFile(cpu + "/cpu.rt_runtime_us"); err != nil || strings.TrimSpace(string(b)) != "0" {
		testenv.Skip(t, fmt.Sprintf("needs real-time group scheduling with no budget in a new cpu cgroup (cpu.rt_runtime_us %q, %v)", b, err))
	}
	cmd := exec.Command("sh", "-c", `echo $$ > "$1/cgroup.procs" && shift && exec "$@"`, "sh", cpu,
		guardBin, "--root="+cg.Mem.Path(cg.Rel, ""), "--policy=noop", "--webhook-url=", "--port=0", "--v=0", "--logtostderr", "--nice=0")
	d := startDaemonCmd(t, cmd, 0)
	for _, want := range []string{"running it at nice -20 instead", "SCHED_RR 1 for the guard's threads"} {
		if !strings.Contains(d.stderr.String(), want) {
			t.Errorf("no word of the fallback (%q) in the log:\n%s", want, d.stderr.String())
		}
	}
	gpid := d.guardPid(t)
	if n := fifoThreads(t, gpid) + rrThreads(t, gpid); n != 0 {
		t.Errorf("%d threads under SCHED_FIFO or SCHED_RR in a cgroup without real-time budget", n)
	}
	if n := niceThreads(t, gpid, -20); n != 1 {
		t.Errorf("%d threads at nice -20, want the decision loop's alone", n)
	}
	d.stop(t) // out of the cpu cgroup before it is removed
}

// --root may name the kubelet's pods on any node: relative paths join the
// memory controller's mount, and of several the first that exists wins.
func TestResolveRoot(t *testing.T) {
	v1 := func() (string, error) { return "/sys/fs/cgroup/memory", nil }
	v2 := func() (string, error) { return "/sys/fs/cgroup", nil }
	none := func() (string, error) { return "", errors.New("no mounted memory cgroup controller") }
	dirs := func(ds ...string) func(string) bool {
		return func(p string) bool { return slices.Contains(ds, p) }
	}
	for _, tc := range []struct {
		name, spec string
		mount      func() (string, error)
		isDir      func(string) bool
		want, err  string
	}{
		{"absolute, as it is", "/sys/fs/cgroup/memory/kubepods", none, dirs(), "/sys/fs/cgroup/memory/kubepods", ""},
		{"relative, v1", "kubepods", v1, dirs(), "/sys/fs/cgroup/memory/kubepods", ""},
		{"v1, cgroupfs driver", "kubepods,kubepods.slice", v1, dirs("/sys/fs/cgroup/memory/kubepods"), "/sys/fs/cgroup/memory/kubepods", ""},
		{"v1, systemd driver", "kubepods,kubepods.slice", v1, dirs("/sys/fs/cgroup/memory/kubepods.slice"), "/sys/fs/cgroup/memory/kubepods.slice", ""},
		{"v2, cgroupfs driver", "kubepods,kubepods.slice", v2, dirs("/sys/fs/cgroup/kubepods"), "/sys/fs/cgroup/kubepods", ""},
		{"v2, systemd driver", "kubepods, kubepods.slice", v2, dirs("/sys/fs/cgroup/kubepods.slice"), "/sys/fs/cgroup/kubepods.slice", ""},
		{"first that exists", "/a,/b,/c", none, dirs("/b", "/c"), "/b", ""},
		{"none exists", "kubepods,kubepods.slice", v2, dirs(), "", "none of /sys/fs/cgroup/kubepods, /sys/fs/cgroup/kubepods.slice exists"},
		{"relative without a memory controller", "kubepods", none, dirs(), "", "relative to the memory controller's mount: no mounted memory cgroup controller"},
		{"empty entry", "kubepods,", v1, dirs(), "", "empty path"},
	} {
		got, err := resolveRoot(tc.spec, tc.mount, tc.isDir)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %q -> %q, %v; want error %q", tc.name, tc.spec, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %q -> %q, %v; want %q", tc.name, tc.spec, got, err, tc.want)
		}
	}
}

// At start the guard says in one log line which kernel it runs on and,
// for each feature it uses, whether it is there and what it does instead,
// and /metrics says the same. Under cmd/oldkernel (make test-oldkernel)
// the line names what that kernel lacks.
func TestStartupNamesKernelFeatures(t *testing.T) {
	cg := testenv.NewCgroup(t)
	cg.Child(t, "app", 64<<20)
	port := freePort(t)
	d := startDaemon(t, cg.Mem.Path(cg.Rel, ""), 1, nil,
		"--policy=noop", "--port="+strconv.Itoa(port), "--webhook-url=", "--kmsg=", "--v=2", "--logtostderr")
	var line string
	for _, l := range strings.Split(d.stderr.String(), "\n") {
		if strings.Contains(l, "] kernel ") {
			if line != "" {
				t.Fatalf("two kernel lines:\n%s\n%s", line, l)
			}
			line = l
		}
	}
	var u unix.Utsname
	_ = unix.Uname(&u)
	release := unix.ByteSliceToString(u.Release[:])
	if !strings.Contains(line, "kernel "+release+":") {
		t.Fatalf("no start-up line naming kernel %s: %q", release, line)
	}
	old := os.Getenv("OOMGUARD_OLDKERNEL")
	for _, f := range []string{"pidfd", "process_mrelease", "openat2", "nspid", "oom_kill"} {
		present := f + " yes"
		missing := f + " ("
		switch {
		case old == "" && !strings.Contains(line, present):
			t.Errorf("full kernel: %q lacks %q", line, present)
		case old == "3.10" && !strings.Contains(line, missing):
			t.Errorf("3.10 surface: %q does not say %s is missing", line, f)
		}
	}
	if old != "" && !strings.HasPrefix(line, "W") {
		t.Errorf("missing features logged below warning level: %q", line)
	}
	metrics := scrape(t, port, "/metrics")
	want := `oomguard_kernel_feature{fallback="",feature="openat2",release="` + release + `",since="5.6"} 1`
	if old != "" {
		want = `feature="openat2",release="` + release + `",since="5.6"} 0`
	}
	if !strings.Contains(metrics, want) {
		t.Errorf("/metrics lacks %q", want)
	}
}
