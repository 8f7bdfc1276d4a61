package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/kernel"
	"github.com/oom-guard/oom-guard/internal/testenv"
)

// The keeper (keeper.go): where the guard holds, the binary runs it as a
// child; a guard SIGKILLed alone leaves its holds, and the keeper undoes
// them and exits with the guard's status (128+9). On SIGTERM the guard
// undoes them itself, and the keeper exits 0. On a kernel without the
// hold there is no keeper.
func TestKeeperReleasesHoldsOfADeadGuard(t *testing.T) {
	for _, tc := range []struct {
		name       string
		end        func(t *testing.T, d *daemon)
		wantStatus int
		wantLine   string
	}{
		{"the guard SIGKILLed alone", func(t *testing.T, d *daemon) {
			if err := syscall.Kill(d.guardPid(t), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}, 128 + 9, "holding 1 cgroups: oom_kill_disable undone"},
		{"the keeper stopped with SIGTERM", func(t *testing.T, d *daemon) {
			if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
		}, 0, "no hold left"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cg := testenv.NewCgroup(t)
			rel := cg.Child(t, "app", 64<<20)
			d := startDaemon(t, cg.Mem.Path(cg.Rel, ""), 1, nil, "--policy=process", "--webhook-url=", "--kmsg=", "--v=1", "--logtostderr")
			if !kernel.HasOOMWait() {
				if strings.Contains(d.stderr.String(), "keeper:") || oomKillDisable(t, cg, rel) {
					t.Fatal("a hold or a keeper on a kernel without the OOM wait of 3.12")
				}
				return
			}
			if !oomKillDisable(t, cg, rel) {
				t.Fatalf("the guarded cgroup is not held:\n%s", d.stderr.String())
			}
			keeper := d.cmd.Process.Pid
			t.Logf("keeper: %s; its guard: %s", vmRSS(t, keeper), vmRSS(t, d.guardPid(t)))
			tc.end(t, d)
			select {
			case <-d.exited:
			case <-time.After(10 * time.Second):
				t.Fatal("the keeper did not end with its guard")
			}
			if got := d.cmd.ProcessState.ExitCode(); got != tc.wantStatus {
				t.Errorf("keeper's exit status %d, want %d", got, tc.wantStatus)
			}
			if oomKillDisable(t, cg, rel) {
				t.Error("the hold is still there after the guard ended")
			}
			if !strings.Contains(d.stderr.String(), tc.wantLine) {
				t.Errorf("no %q in the log:\n%s", tc.wantLine, d.stderr.String())
			}
		})
	}
}

func oomKillDisable(t *testing.T, cg *testenv.Cgroup, rel string) bool {
	t.Helper()
	data, err := os.ReadFile(cg.Mem.Path(rel, "memory.oom_control"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(data), "oom_kill_disable 1")
}

func vmRSS(t *testing.T, pid int) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	var fields []string
	for _, l := range strings.Split(string(data), "\n") {
		for _, f := range []string{"VmRSS:", "RssAnon:", "RssFile:"} {
			if strings.HasPrefix(l, f) {
				fields = append(fields, f+" "+strings.TrimSpace(strings.TrimPrefix(l, f)))
			}
		}
	}
	return strings.Join(fields, ", ")
}
