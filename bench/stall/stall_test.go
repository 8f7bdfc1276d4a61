package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/testenv"
	"github.com/oom-guard/oom-guard/internal/testenv/vm"
)

// TestMain lets the test binary be a neighbour too (the VM has only it).
func TestMain(m *testing.M) {
	if kind := os.Getenv(envNeighbour); kind != "" {
		runNeighbour(kind)
		return
	}
	os.Exit(m.Run())
}

// TestStallInGuest is the VM's half of the command: `go run ./bench/stall`
// boots the VM for it, and TestStallInVM with a short -for. Its rows come
// back as a file. It asserts nothing of the figures.
func TestStallInGuest(t *testing.T) {
	vm.GuestOnly(t)
	d, err := time.ParseDuration(os.Getenv(envFor))
	if err != nil {
		t.Fatalf("%s: %v", envFor, err)
	}
	rows, err := measureAll("VM", d, os.Args[0], "-test.run=^$")
	if werr := os.WriteFile(filepath.Join(vm.OutDir(), vmTable), []byte(strings.Join(rows, "\n")+"\n"), 0o644); werr != nil {
		t.Error(werr)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestStallInVM runs the VM's half briefly, so that it keeps working: every
// row comes back, with wake-ups counted.
func TestStallInVM(t *testing.T) {
	testenv.RequireRoot(t)
	res := vm.Run(t, ".", vm.Options{Run: "^TestStallInGuest$", Env: []string{envFor + "=100ms"}, MemoryMiB: 1024})
	if res == nil || t.Failed() {
		return
	}
	rows := strings.Split(strings.TrimSpace(string(res.Files[vmTable])), "\n")
	if len(rows) != 2*len(neighbours) {
		t.Fatalf("%d rows from the VM, want %d:\n%s", len(rows), 2*len(neighbours), res.Files[vmTable])
	}
	for _, r := range rows {
		if !strings.HasPrefix(r, "| VM | ") || strings.Contains(r, "| 0 | - |") {
			t.Errorf("row %q", r)
		}
	}
}
