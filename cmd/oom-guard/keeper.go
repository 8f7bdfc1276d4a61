package main

import (
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/guard"
	"github.com/oom-guard/oom-guard/internal/kernel"
)

// The keeper. With holds (--v1-hold-oom) a guard that dies without
// undoing them leaves its cgroups waiting at their limits for a kill only
// a guard makes, until the next guard starts: in a crash loop, minutes.
// So where the guard holds, the binary runs the guard as its child and
// stays, idle, as its parent: when the guard ends in any way (a panic, an
// OOM kill of the guard alone, a SIGKILL), the keeper undoes the holds the
// state file records and exits with the guard's status, and the
// DaemonSet's restart brings both back. SIGTERM and SIGINT are passed to
// the guard, which then undoes everything itself.
//
// In a container the keeper is PID 1, so a keeper's death ends the guard
// too (and on a plain host the guard gets SIGKILL when its keeper dies):
// no guard runs unkept.

// keptEnv marks the keeper's child: the guard itself.
const keptEnv = "OOMGUARD_KEPT"

// wantsKeeper tells whether this process is to keep a guard that holds.
func wantsKeeper(o *options, mem cgroup.Memory) bool {
	return os.Getenv(keptEnv) == "" && o.guard.HoldOOM && o.guard.Policy != guard.PolicyNoop && o.guard.StateFile != "" &&
		mem.Version() == cgroup.VersionV1 && kernel.HasOOMWait()
}

// keep runs the guard (this binary, args) as its child until it ends, then
// releases what holds it left; it returns the guard's exit status.
func keep(args []string, stateFile string, mem cgroup.Memory) int {
	runtime.LockOSThread() // Pdeathsig is sent when the thread that started the child ends
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(os.Environ(), keptEnv+"=1")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	if err := cmd.Start(); err != nil {
		klog.Errorf("keeper: start the guard: %v", err)
		return 1
	}
	spareKeeper()
	klog.Infof("keeper: the guard runs as pid %d; should it end without undoing its holds (oom_kill_disable), this process undoes them", cmd.Process.Pid)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var waitErr error
	for ended := false; !ended; {
		select {
		case s := <-sig:
			_ = cmd.Process.Signal(s)
		case waitErr = <-done:
			ended = true
		}
	}
	status := exitStatus(cmd.ProcessState, waitErr)
	n, err := guard.ReleaseHolds(stateFile, mem)
	switch {
	case err != nil:
		klog.Errorf("keeper: the guard ended (%v); its holds could not be undone: %v", cmd.ProcessState, err)
	case n > 0:
		klog.Warningf("keeper: the guard ended (%v) holding %d cgroups: oom_kill_disable undone, the kernel's OOM killer has them until the next guard", cmd.ProcessState, n)
	default:
		klog.Infof("keeper: the guard ended (%v), no hold left", cmd.ProcessState)
	}
	return status
}

// exitStatus is the guard's exit status as a shell gives it: its code, or
// 128 plus the signal that ended it.
func exitStatus(ps *os.ProcessState, err error) int {
	if ps == nil {
		return 1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		return 1
	}
	return ps.ExitCode()
}

// spareKeeper puts the keeper's oom_score_adj at -1000, set after its
// child started (which keeps the value it had): the guard never kills a
// process at -1000, and the keeper shares the guard's cgroup, which the
// guard may guard too. Lowering it needs CAP_SYS_RESOURCE (the manifest's
// privileged container has it); without, the guard might choose its own
// keeper when its cgroup nears the limit, which is said.
func spareKeeper() {
	err := os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(-1000)), 0)
	if err != nil {
		klog.Warningf("keeper: oom_score_adj -1000 refused (%v): the guard could choose its keeper as a victim in its own cgroup", err)
	}
}
