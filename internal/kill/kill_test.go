package kill_test

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/kill"
	"github.com/oom-guard/oom-guard/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.RunHogIfRequested()
	os.Exit(m.Run())
}

func setAdj(t *testing.T, cmd *exec.Cmd, adj string) {
	t.Helper()
	if err := os.WriteFile("/proc/"+itoa(cmd.Process.Pid)+"/oom_score_adj", []byte(adj), 0); err != nil {
		t.Fatal(err)
	}
}

func itoa(i int) string { return string(appendInt(nil, i)) }
func appendInt(b []byte, i int) []byte {
	if i >= 10 {
		b = appendInt(b, i/10)
	}
	return append(b, byte('0'+i%10))
}

func waitExit(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("pid %d still alive", cmd.Process.Pid)
	}
}

func alive(cmd *exec.Cmd) bool {
	return cmd.ProcessState == nil && cmd.Process.Signal(syscall.Signal(0)) == nil
}

// The process policy picks the process the kernel would: with three equal
// processes, the one with the highest positive oom_score_adj (this machine
// refuses negative values).
func TestChooseAndKillHighestScore(t *testing.T) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "c", 0)
	var cmds []*exec.Cmd
	for _, adj := range []string{"100", "800", "300"} {
		cmd := testenv.HogCommand(testenv.HogSpec{MiB: 8, Hold: true})
		cg.Start(t, rel, cmd)
		setAdj(t, cmd, adj)
		cmds = append(cmds, cmd)
	}
	proc := kill.Proc{}
	cands, err := kill.Candidates(cg.Mem, proc, cg.Rel, cgroup.Unlimited)
	if err != nil || len(cands) != 3 {
		t.Fatalf("candidates %v, %v", cands, err)
	}
	v, ok := kill.Choose(cands, os.Getpid())
	if !ok || v.Pid != cmds[1].Process.Pid || v.Cgroup != rel {
		t.Fatalf("chose %+v, want pid %d in %s", v, cmds[1].Process.Pid, rel)
	}
	target, err := proc.Open(v)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := target.Kill(); err != nil {
		t.Fatal(err)
	}
	waitExit(t, cmds[1])
	if !alive(cmds[0]) || !alive(cmds[2]) {
		t.Fatal("a decoy died")
	}
}

// A PID that no longer names the inspected process is never signalled.
func TestProcessRefusesReusedPid(t *testing.T) {
	testenv.RequireRoot(t)
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	proc := kill.Proc{}
	c, err := proc.Inspect(cmd.Process.Pid, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	c.StartTime++ // as if the PID now belonged to a later process
	if _, err := proc.Open(c); !errors.Is(err, kill.ErrGone) {
		t.Fatalf("want ErrGone, got %v", err)
	}
	if !alive(cmd) {
		t.Fatal("process was killed")
	}
}

// The container kill takes every process of the cgroup and its children,
// frozen first through the v1 freezer, and leaves the cgroup thawed.
func TestCgroupKillsEverything(t *testing.T) {
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "ctr", 0)
	sub := cg.Child(t, "ctr/sub", 0)
	var cmds []*exec.Cmd
	for _, where := range []string{rel, rel, sub} {
		cmd := testenv.HogCommand(testenv.HogSpec{Kind: "sleep"})
		cg.Start(t, where, cmd)
		cmds = append(cmds, cmd)
	}
	outsider := testenv.HogCommand(testenv.HogSpec{Kind: "sleep"})
	cg.Start(t, cg.Child(t, "other", 0), outsider)
	freezer, err := cgroup.V1Sibling(testenv.V1MemoryRoot, "freezer")
	if err != nil {
		t.Fatal(err)
	}
	k := kill.Killer{Mem: cg.Mem, Freezer: freezer, Self: os.Getpid()}
	killed, _, err := k.KillContainer(rel)
	if err != nil || len(killed) != 3 {
		t.Fatalf("killed %v, %v", killed, err)
	}
	for _, c := range cmds {
		waitExit(t, c)
	}
	if !alive(outsider) {
		t.Fatal("a process outside the cgroup died")
	}
	if st, _ := freezer.ReadFile(rel, "freezer.state"); string(st) != "THAWED\n" {
		t.Fatalf("freezer left %q", st)
	}
	if _, _, err := k.KillContainer(rel); !errors.Is(err, kill.ErrNoVictim) {
		t.Fatalf("empty cgroup: %v", err)
	}
}

// A killed process not yet reaped by its parent is a zombie: Alive must
// say it is gone, or the guard could not tell which process the kernel's
// OOM killer took.
func TestAliveSeesZombie(t *testing.T) {
	testenv.RequireRoot(t)
	cmd := testenv.HogCommand(testenv.HogSpec{Kind: "sleep"})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer waitExit(t, cmd)
	var p kill.Proc
	c, err := p.Inspect(cmd.Process.Pid, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Alive(c) {
		t.Fatal("a running process reads as gone")
	}
	other := c
	other.StartTime++
	if p.Alive(other) {
		t.Fatal("a PID with another start time reads as the same process")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.Alive(c) {
		if time.Now().After(deadline) {
			t.Fatal("a killed, unreaped process still reads as alive after 5s")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := os.Stat("/proc/" + itoa(cmd.Process.Pid)); err != nil {
		t.Fatalf("the zombie was reaped already (%v): the test proves nothing", err)
	}
}

// Inspect tells the CPU a process last ran on, its threads and its
// scheduling policy, which the guard's loop uses to sleep where the
// victim's next page fault will wake it (guard/affinity.go): a process
// pinned to one CPU reads as on it, with one thread; one started under
// SCHED_FIFO as real-time, a normal one not.
func TestInspectReadsCPUAndPolicy(t *testing.T) {
	testenv.RequireRoot(t)
	cpu := runtime.NumCPU() - 1
	for _, tc := range []struct {
		name     string
		args     []string
		realTime bool
	}{
		{"normal", []string{"taskset", "-c", strconv.Itoa(cpu), "sleep", "30"}, false},
		{"SCHED_FIFO", []string{"chrt", "-f", "1", "taskset", "-c", strconv.Itoa(cpu), "sleep", "30"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, err := exec.LookPath(tc.args[0])
			if err != nil {
				testenv.Skip(t, tc.args[0]+" not installed")
			}
			cmd := exec.Command(path, tc.args[1:]...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
			var c kill.Candidate
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				if c, err = (kill.Proc{}).Inspect(cmd.Process.Pid, 1<<20); err == nil && c.Comm == "sleep" || time.Now().After(deadline) {
					break // exec'd through chrt and taskset
				}
			}
			if err != nil || c.Comm != "sleep" {
				t.Fatalf("inspect: %+v, %v", c, err)
			}
			if c.CPU != cpu {
				t.Errorf("pinned to CPU %d, read as on CPU %d", cpu, c.CPU)
			}
			if c.Threads != 1 {
				t.Errorf("sleep has %d threads, read as %d", 1, c.Threads)
			}
			if c.RealTime() != tc.realTime {
				t.Errorf("policy %d: real-time %v, want %v", c.Policy, c.RealTime(), tc.realTime)
			}
		})
	}
}
