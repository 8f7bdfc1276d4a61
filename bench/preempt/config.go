package main

import (
	"flag"
	"os"
	"path/filepath"

	"github.com/oom-guard/oom-guard/internal/guard"
)

var holdOOM = flag.Bool("v1-hold", true, "v1: hold the guarded cgroups (--v1-hold-oom) as the manifest does; false measures the races without the hold")

// killingConfig is the guard's configuration as the manifest runs it: the
// process policy, with a state file, so that on cgroup v1 (3.12 on) each
// guarded cgroup is held (--v1-hold-oom) as the DaemonSet holds it. The
// file lives in a directory of its own, removed by the returned function
// after the guard has stopped (and restored what it wrote).
func killingConfig() (guard.Config, func(), error) {
	cfg := guard.DefaultConfig()
	cfg.Policy = guard.PolicyProcess
	cfg.HoldOOM = *holdOOM
	dir, err := os.MkdirTemp("", "oomguard-bench-state-")
	if err != nil {
		return cfg, nil, err
	}
	cfg.StateFile = filepath.Join(dir, "state.jsonl")
	return cfg, func() { _ = os.RemoveAll(dir) }, nil
}
