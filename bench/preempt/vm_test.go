package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/testenv"
	"github.com/oom-guard/oom-guard/internal/testenv/vm"
)

func TestMain(m *testing.M) {
	testenv.RunHogIfRequested()
	os.Exit(m.Run())
}

// TestBenchV2 is the cgroup v2 half of the benchmark, in the VM: `go run
// ./bench/preempt` boots the VM for it (vm.BootCommand) with its config in
// the environment, and TestBenchV2InVM with a small one. Its tables come
// back as a file. It asserts nothing of the figures: they are the
// benchmark's to print.
func TestBenchV2(t *testing.T) {
	vm.GuestOnly(t)
	var c config
	if err := json.Unmarshal([]byte(os.Getenv(envConfig)), &c); err != nil {
		t.Fatalf("%s: %v", envConfig, err)
	}
	var tables bytes.Buffer
	err := run(v2Hierarchy, c, &tables)
	if werr := os.WriteFile(filepath.Join(vm.OutDir(), v2Table), tables.Bytes(), 0o644); werr != nil {
		t.Error(werr)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestBenchV2InVM runs the v2 benchmark once, small, so that it keeps
// working: it checks that every table comes back, not what they say.
func TestBenchV2InVM(t *testing.T) {
	c := config{
		Runs: 2, Limits: []int{64}, Threads: []int{1}, Mechanisms: []string{"events", "poll+events", "poll+events+high"},
		Idle: []int{50}, IdleFor: time.Second, EventRuns: 1,
	}
	js, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	res := vm.Run(t, ".", vm.Options{Run: "^TestBenchV2$", Env: []string{envConfig + "=" + string(js)}, MemoryMiB: 1024, Timeout: 4 * time.Minute})
	if res == nil || t.Failed() {
		return
	}
	tables := string(res.Files[v2Table])
	for _, want := range []string{"Preemption on cgroup v2", "| events | 64 MiB | 1 | 2 |", "| poll+events | 64 MiB | 1 | 2 |", "| poll+events+high | 64 MiB | 1 | 2 |",
		"Kernel OOM kill to event on cgroup v2", "Idle cost of the guard over 50 guarded cgroups"} {
		if !strings.Contains(tables, want) {
			t.Errorf("the v2 tables lack %q:\n%s", want, tables)
		}
	}
	t.Logf("\n%s", tables)
}
