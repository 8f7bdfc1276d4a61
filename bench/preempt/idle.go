package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/oom-guard/oom-guard/internal/cgroup"
)

// idleSpec is the idle-cost mode of the v1 benchmark: the real oom-guard
// binary, in a memory cgroup of its own so that what the kernel charges it
// (its pages and the kernel memory of its eventfds, open files, inotify
// watches) can be read, over a hierarchy shaped like a node's.
type idleSpec struct {
	Known      []int   // known cgroups, one row each
	LimitedPod float64 // share of pods with a memory limit
	For        time.Duration
	Limit      uint64 // the guard's cgroup limit; 0: none
	GoMemLimit string // GOMEMLIMIT for the guard; "": none
	Churn      int    // bursts of ChurnSize short-lived limited cgroups after the idle measurement
	ChurnSize  int
	GuardBin   string
}

// idleRow is one measurement of the guard at rest.
type idleRow struct {
	known, limited int
	guarded        int
	ready          time.Duration
	rss, usage     uint64 // bytes
	kmem, peak     uint64
	fds            int
	cpuPct         float64
	oomKills       uint64
	resetStall     string // the loop's longest turn in an inotify reset, from its histogram
	note           string
}

// nodeShape makes n cgroups under base as a node's pods lay them out on
// v1: a pod cgroup with its sandbox's (pause, no limit of its own) and its
// container's below it. A limited pod has a limit on the pod and on its
// container; the others (BestEffort) have none. It returns how many are
// limited.
func nodeShape(root *cgroup.FS, base string, n int, limitedPods float64) (int, error) {
	if err := root.Mkdir(base); err != nil {
		return 0, err
	}
	limited := 0
	for made, pod := 0, 0; made < n; pod++ {
		withLimit := float64(pod%100) < limitedPods*100
		dirs := []string{fmt.Sprintf("%s/pod%d", base, pod)}
		dirs = append(dirs, dirs[0]+"/pause", dirs[0]+"/app")
		for i, rel := range dirs {
			if made == n {
				break
			}
			if err := root.Mkdir(rel); err != nil {
				return limited, err
			}
			made++
			if !withLimit || i == 1 {
				continue
			}
			if err := root.WriteFile(rel, "memory.limit_in_bytes", strconv.Itoa(256<<20)); err != nil {
				return limited, err
			}
			limited++
		}
	}
	return limited, nil
}

// idleCost measures the guard binary at rest for each row of s and, with
// s.Churn, through bursts of short-lived cgroups.
func idleCost(root *cgroup.FS, top string, s idleSpec, out io.Writer) error {
	bin := s.GuardBin
	if bin == "" {
		dir, err := os.MkdirTemp("", "oomguard-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		bin = filepath.Join(dir, "oom-guard")
		build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./cmd/oom-guard")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("build oom-guard: %v\n%s", err, out)
		}
	}
	var rows []idleRow
	var churn [][]idleRow
	for _, n := range s.Known {
		r, c, err := idleOne(root, top, n, s, bin)
		if err != nil {
			return err
		}
		rows, churn = append(rows, r), append(churn, c)
	}
	limit := "none"
	if s.Limit > 0 {
		limit = fmt.Sprintf("%d MiB", s.Limit>>20)
	}
	gml := s.GoMemLimit
	if gml == "" {
		gml = "unset"
	}
	fmt.Fprintf(out, "\nThe oom-guard binary at rest (%s), in a memory cgroup of its own (limit %s, GOMEMLIMIT %s), over a node-shaped hierarchy (pods of pod, pause and container cgroups; %.0f%% of pods limited, 256 MiB); idle %v; load %s\n\n",
		kernelRelease(), limit, gml, s.LimitedPod*100, s.For, loadAvg())
	fmt.Fprintln(out, "| known cgroups | guarded (of limited) | all guarded after | RSS | cgroup usage | of which kernel | peak usage | fds | idle CPU | longest loop stall in an inotify reset | guard OOM-killed |")
	fmt.Fprintln(out, "|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Fprintf(out, "| %d | %d (%d) | %s | %s | %s | %s | %s | %d | %.2f%% | %s | %s |\n", r.known, r.guarded, r.limited, readyText(r),
			mib(r.rss), mib(r.usage), mib(r.kmem), mib(r.peak), r.fds, r.cpuPct, stallText(r), oomText(r))
	}
	for i, c := range churn {
		if len(c) == 0 {
			continue
		}
		fmt.Fprintf(out, "\nChurn over %d known cgroups: %d bursts of %d limited cgroups, each made, guarded and removed; measured after each burst (the last row: after %v at rest)\n\n",
			rows[i].known, s.Churn, s.ChurnSize, s.For)
		fmt.Fprintln(out, "| after | RSS | cgroup usage | of which kernel | peak usage | fds | guard OOM-killed |")
		fmt.Fprintln(out, "|---|---|---|---|---|---|---|")
		fmt.Fprintf(out, "| start | %s | %s | %s | %s | %d | %s |\n", mib(rows[i].rss), mib(rows[i].usage), mib(rows[i].kmem), mib(rows[i].peak), rows[i].fds, oomText(rows[i]))
		for _, r := range c {
			fmt.Fprintf(out, "| %s | %s | %s | %s | %s | %d | %s |\n", r.note, mib(r.rss), mib(r.usage), mib(r.kmem), mib(r.peak), r.fds, oomText(r))
		}
	}
	return nil
}

func readyText(r idleRow) string {
	if r.ready == 0 {
		return "never: " + r.note
	}
	return r.ready.Round(10 * time.Millisecond).String()
}

func stallText(r idleRow) string {
	if r.resetStall == "" {
		return "—"
	}
	return r.resetStall
}

func oomText(r idleRow) string {
	if r.oomKills == 0 {
		return "no"
	}
	return fmt.Sprintf("**yes** (%d)", r.oomKills)
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// guardProc is the guard binary running in its own cgroup.
type guardProc struct {
	root    *cgroup.FS
	cg      string
	cmd     *exec.Cmd
	port    int
	started time.Time
	ready   chan time.Duration
	exited  chan struct{}
	waitErr error
}

// startGuard runs bin over base in a new cgroup cgRel: a shell puts
// itself there and execs the guard, so every page the guard touches is
// charged to it.
func startGuard(root *cgroup.FS, base, cgRel, bin string, s idleSpec) (*guardProc, error) {
	if err := root.Mkdir(cgRel); err != nil {
		return nil, err
	}
	if s.Limit > 0 {
		if err := root.WriteFile(cgRel, "memory.limit_in_bytes", strconv.FormatUint(s.Limit, 10)); err != nil {
			return nil, err
		}
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	procs := root.Path(cgRel, "cgroup.procs")
	cmd := exec.Command("/bin/sh", "-c", `echo $$ > "$1" && shift && exec "$@"`, "sh", procs,
		bin, "--root="+root.Path(base, ""), "--policy=noop", "--webhook-url=", "--v=0", "--port="+strconv.Itoa(port),
		"--inotifyResetSeconds="+strconv.Itoa(int(idleResetAfter(s).Seconds())))
	cmd.Env = os.Environ()
	if s.GoMemLimit != "" {
		cmd.Env = append(cmd.Env, "GOMEMLIMIT="+s.GoMemLimit)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	started := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &guardProc{root: root, cg: cgRel, cmd: cmd, port: port, started: started, ready: make(chan time.Duration, 1), exited: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			if strings.Contains(line, "guarding ") && strings.Contains(line, " ready ") {
				p.ready <- time.Since(started)
			}
			if strings.Contains(line, "] ") && (strings.HasPrefix(line, "E") || strings.HasPrefix(line, "W") || strings.HasPrefix(line, "F")) {
				fmt.Fprintln(os.Stderr, "guard:", line)
			}
		}
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

var guardedMetric = regexp.MustCompile(`(?m)^oomguard_guarded_cgroups (\S+)$`)

// idleResetAfter is the guard's --inotifyResetSeconds in the idle mode:
// its first reset (after the one it starts with) comes once it is ready
// and its idle cost measured, and the loop's longest turn during it is
// read from its oomguard_loop_busy_seconds histogram (reset stall).
func idleResetAfter(s idleSpec) time.Duration { return s.For.Round(time.Second) + 25*time.Second }

var busyBucket = regexp.MustCompile(`(?m)^oomguard_loop_busy_seconds_bucket\{le="([^"]+)"\} (\S+)$`)

// busyBuckets is the loop-busy histogram's cumulative counts by upper
// bound (seconds, +Inf last).
func (p *guardProc) busyBuckets() ([]string, map[string]float64) {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", p.port))
	if err != nil {
		return nil, nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var les []string
	counts := map[string]float64{}
	for _, m := range busyBucket.FindAllSubmatch(body, -1) {
		v, _ := strconv.ParseFloat(string(m[2]), 64)
		les = append(les, string(m[1]))
		counts[string(m[1])] = v
	}
	return les, counts
}

// resetStall waits for the guard's first periodic inotify reset and says
// within which of the histogram's buckets its longest loop turn fell: the
// bucket of the longest turn counted between a scrape before the reset
// and one after its re-watch, walk and hand-over ("" if the reset was
// missed: the guard was not ready in time).
func (p *guardProc) resetStall(s idleSpec) string {
	at := p.started.Add(idleResetAfter(s))
	if time.Until(at) < 2*time.Second {
		return ""
	}
	time.Sleep(time.Until(at) - 2*time.Second)
	les, before := p.busyBuckets()
	time.Sleep(7 * time.Second)
	_, after := p.busyBuckets()
	if len(les) == 0 {
		return ""
	}
	delta := func(i int) float64 { return after[les[i]] - before[les[i]] }
	last := len(les) - 1
	if delta(last) == 0 {
		return "" // no turn counted: no metrics
	}
	for i := range les {
		if delta(i) < delta(last) {
			continue
		}
		switch i {
		case 0:
			return "≤ " + msText(les[0]) + " ms"
		case last:
			return "over " + msText(les[last-1]) + " ms"
		}
		return msText(les[i-1]) + "–" + msText(les[i]) + " ms"
	}
	return ""
}

// msText is a bound in seconds, as milliseconds.
func msText(sec string) string {
	v, _ := strconv.ParseFloat(sec, 64)
	return strconv.FormatFloat(v*1000, 'g', 3, 64)
}

// guarded is the guard's own count of guarded cgroups; -1 if unknown.
func (p *guardProc) guarded() int {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", p.port))
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := guardedMetric.FindSubmatch(body)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return int(v)
}

// waitGuarded waits until the guard guards want cgroups (or its process
// ends, or the timeout).
func (p *guardProc) waitGuarded(want int, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if p.gone() {
			return false
		}
		if p.guarded() == want {
			return true
		}
	}
	return false
}

func (p *guardProc) gone() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// sample reads what the guard costs now.
func (p *guardProc) sample() idleRow {
	var r idleRow
	r.usage = readUint(p.root, p.cg, "memory.usage_in_bytes")
	r.kmem = readUint(p.root, p.cg, "memory.kmem.usage_in_bytes")
	r.peak = readUint(p.root, p.cg, "memory.max_usage_in_bytes")
	r.oomKills = p.oomKills()
	if !p.gone() {
		r.rss = statusKB(p.cmd.Process.Pid, "VmRSS") << 10
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.cmd.Process.Pid))
		r.fds = len(fds)
	}
	return r
}

func (p *guardProc) oomKills() uint64 {
	data, err := p.root.ReadFile(p.cg, "memory.oom_control")
	if err != nil {
		return 0
	}
	m, err := cgroup.ParseFlatKeyed(strings.NewReader(string(data)))
	if err != nil {
		return 0
	}
	return m["oom_kill"]
}

func readUint(root *cgroup.FS, rel, file string) uint64 {
	data, err := root.ReadFile(rel, file)
	if err != nil {
		return 0
	}
	v, _ := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	return v
}

// stop ends the guard and removes its cgroup.
func (p *guardProc) stop() {
	if !p.gone() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	}
	removeTree(p.root, p.cg)
}

// idleOne measures one row: n known cgroups.
func idleOne(root *cgroup.FS, top string, n int, s idleSpec, bin string) (idleRow, []idleRow, error) {
	base := fmt.Sprintf("%s/idle-%d", top, n)
	defer removeTree(root, base)
	limited, err := nodeShape(root, base, n, s.LimitedPod)
	if err != nil {
		return idleRow{}, nil, err
	}
	p, err := startGuard(root, base, fmt.Sprintf("%s/guard-%d", top, n), bin, s)
	if err != nil {
		return idleRow{}, nil, err
	}
	defer p.stop()
	row := idleRow{known: n}
	select {
	case row.ready = <-p.ready:
	case <-p.exited:
		row.note = fmt.Sprintf("exited (%v)", p.waitErr)
	case <-time.After(2 * time.Minute):
		row.note = "not ready after 2 minutes"
	}
	fmt.Fprintf(os.Stderr, "idle %d: ready after %v %s\n", n, row.ready, row.note)
	if row.ready == 0 {
		r := p.sample()
		r.known, r.limited, r.note = n, limited, row.note
		r.guarded = max(p.guarded(), 0)
		return r, nil, nil
	}
	cpu0 := cpuTicks(p.cmd.Process.Pid)
	time.Sleep(s.For)
	cpu1 := cpuTicks(p.cmd.Process.Pid)
	r := p.sample()
	r.known, r.ready = n, row.ready
	r.guarded, r.limited = p.guarded(), limited
	const hz = 100 // USER_HZ
	r.cpuPct = float64(cpu1-cpu0) / hz / s.For.Seconds() * 100
	r.resetStall = p.resetStall(s)
	fmt.Fprintf(os.Stderr, "idle %d: longest loop turn in the inotify reset: %s\n", n, stallText(r))
	var churn []idleRow
	for b := 1; b <= s.Churn && !p.gone(); b++ {
		churn = append(churn, burst(root, base, b, s.ChurnSize, r.guarded, p))
	}
	if s.Churn > 0 {
		time.Sleep(s.For)
		c := p.sample()
		c.note = "rest"
		churn = append(churn, c)
	}
	return r, churn, nil
}

// burst makes size limited cgroups, waits for the guard to guard them,
// removes them and waits for it to let them go.
func burst(root *cgroup.FS, base string, b, size, guarded int, p *guardProc) idleRow {
	rel := fmt.Sprintf("%s/churn-%d", base, b)
	note := fmt.Sprintf("burst %d", b)
	if err := root.Mkdir(rel); err != nil {
		return idleRow{note: err.Error()}
	}
	for i := 0; i < size; i++ {
		c := fmt.Sprintf("%s/c%d", rel, i)
		if root.Mkdir(c) != nil || root.WriteFile(c, "memory.limit_in_bytes", strconv.Itoa(64<<20)) != nil {
			break
		}
	}
	if !p.waitGuarded(guarded+size, time.Minute) {
		note += " (not all guarded)"
	}
	removeTree(root, rel)
	if !p.waitGuarded(guarded, time.Minute) {
		note += " (not all let go)"
	}
	r := p.sample()
	r.note = note
	fmt.Fprintf(os.Stderr, "%s: usage %s, kernel %s\n", note, mib(r.usage), mib(r.kmem))
	return r
}
