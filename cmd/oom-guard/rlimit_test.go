package main

import (
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/testenv"
)

// The binary with an RLIMIT_NOFILE too small for its cgroups stays up,
// guards what the limit allows (and can still kill in those: it keeps fds
// for kills), says once what it cannot (one warning; oomguard_unguarded_-
// cgroups and oomguard_faults_total count it), and guards the rest once
// cgroups go away or the limit allows. At start it raises the soft limit
// to the hard one and logs both.
func TestBinaryOutOfFdsGuardsWhatItCan(t *testing.T) {
	const cgroups = 60
	// 150 fds hold the binary's own (about 30), the 64 it keeps for kills,
	// and a few cgroups, not all 60.
	const tooFew = 150
	t.Run("started too small, cgroups go away", func(t *testing.T) {
		cg := testenv.NewCgroup(t)
		rels := children(t, cg, cgroups)
		port := freePort(t)
		d := startDaemonUntil(t, exec.Command("prlimit", append([]string{fmt.Sprintf("--nofile=100:%d", tooFew), guardBin}, guardArgs(cg, port)...)...), "guarding ")
		// The Go runtime raises the soft limit before main as far as it
		// can; the guard says what it found, and raises it the rest.
		if !regexp.MustCompile(`open files: soft limit (raised from \d+ to the hard limit 150|150, hard limit 150)`).MatchString(d.stderr.String()) {
			t.Errorf("the start does not log the file limits")
		}
		short := checkShort(t, d, port, cgroups)
		// What it guards, it guards: of hogs in every cgroup but the
		// last 20, the guard kills those in the guarded ones.
		for _, rel := range rels[:cgroups-20] {
			hog := testenv.HogCommand(testenv.HogSpec{MiB: 0})
			cg.Start(t, rel, hog)
			testenv.WaitExit(t, hog, 15*time.Second)
		}
		if kills := strings.Count(d.stderr.String(), string(event.KillProcess)); kills == 0 {
			t.Errorf("no kill by the guard in %d hogs with %d cgroups guarded", cgroups-20, cgroups-short)
		}
		// Cgroups going away free what they held, or their place in the
		// queue: with as many gone as were waiting, all are guarded.
		for _, rel := range rels[cgroups-short:] {
			if err := cg.Mem.Rmdir(rel); err != nil {
				t.Fatal(err)
			}
		}
		waitGauges(t, port, 15*time.Second, func(g, u int) bool { return g == cgroups-short && u == 0 })
		if !waitLog(d, "no limited cgroup waits for its registration any more", time.Second) {
			t.Error("the end of the shortage is not logged")
		}
	})
	t.Run("the limit raised", func(t *testing.T) {
		// Root here cannot raise a hard limit (no CAP_SYS_RESOURCE on
		// this machine): the soft one is lowered once the guard runs, and
		// raised back to the hard one.
		cg := testenv.NewCgroup(t)
		port := freePort(t)
		d := startDaemonUntil(t, exec.Command(guardBin, guardArgs(cg, port)...), "guarding 0 of ")
		pid := strconv.Itoa(d.guardPid(t))
		prlimit(t, pid, fmt.Sprintf("--nofile=%d:", tooFew))
		children(t, cg, cgroups)
		short := checkShort(t, d, port, cgroups)
		t.Logf("%d waiting", short)
		prlimit(t, pid, "--nofile=4096:")
		waitGauges(t, port, 15*time.Second, func(g, u int) bool { return g == cgroups && u == 0 })
		if !waitLog(d, "no limited cgroup waits for its registration any more", time.Second) {
			t.Error("the end of the shortage is not logged")
		}
	})
}

func guardArgs(cg *testenv.Cgroup, port int) []string {
	return []string{"--root=" + cg.Mem.Path(cg.Rel, ""), "--policy=process", "--port=" + strconv.Itoa(port),
		"--min-margin=16", "--max-margin=30", "--webhook-url=", "--inotifyResetSeconds=1", "--v=1", "--logtostderr"}
}

// children makes n limited cgroups under cg.
func children(t *testing.T, cg *testenv.Cgroup, n int) []string {
	t.Helper()
	var rels []string
	for i := 0; i < n; i++ {
		rels = append(rels, cg.Child(t, fmt.Sprintf("pod%02d", i), 64<<20))
	}
	return rels
}

func prlimit(t *testing.T, pid, arg string) {
	t.Helper()
	if out, err := exec.Command("prlimit", "--pid", pid, arg).CombinedOutput(); err != nil {
		t.Fatalf("prlimit %s: %v: %s", arg, err, out)
	}
}

// checkShort checks the guard out of fds over n limited cgroups: some
// guarded, the rest waiting, the fault counted, one warning, still up after
// a few inotify resets and retries. It returns how many wait.
func checkShort(t *testing.T, d *daemon, port, n int) int {
	t.Helper()
	var g, u int
	waitGauges(t, port, 10*time.Second, func(gg, uu int) bool { g, u = gg, uu; return g+u == n && u > 0 })
	if g == 0 {
		t.Fatalf("none of %d guarded", n)
	}
	if faults := metric(t, scrape(t, port, "/metrics"), `oomguard_faults_total{kind="registration"}`); faults < 1 {
		t.Errorf("no registration fault counted")
	}
	time.Sleep(2500 * time.Millisecond)
	select {
	case <-d.exited:
		t.Fatalf("oom-guard exited: %v", d.cmd.ProcessState)
	default:
	}
	if c := strings.Count(d.stderr.String(), "not guarded:"); c != 1 {
		t.Errorf("%d warnings of cgroups not guarded, want 1", c)
	}
	t.Logf("out of fds: %d guarded, %d waiting", g, u)
	return u
}

// gauges reads the guard's two gauges: guarded and waiting cgroups.
func gauges(t *testing.T, port int) (int, int) {
	t.Helper()
	m := scrape(t, port, "/metrics")
	return int(metric(t, m, "oomguard_guarded_cgroups")), int(metric(t, m, "oomguard_unguarded_cgroups"))
}

// waitGauges waits until ok holds of the gauges.
func waitGauges(t *testing.T, port int, timeout time.Duration, ok func(guarded, unguarded int) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		g, u := gauges(t, port)
		if ok(g, u) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %d guarded, %d waiting", timeout, g, u)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// metric is the value of the series named exactly name in a scrape.
func metric(t *testing.T, scraped, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(scraped, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return 0
}
