// Command stall measures how late a real-time thread wakes, on this machine
// and in the cgroup v2 VM of internal/testenv/vm: what bounds a guard that
// must see a cgroup's usage cross a level by sampling it. A SCHED_FIFO
// thread (priority 2, above the guard loop's 1) sleeps 200 us in a loop and
// records how late each wake-up comes, alone and beside a neighbour process
// (a CPU-bound loop, or one that maps, touches and unmaps 48 MiB in a
// loop); once sleeping through Go's syscall.Syscall, as all Go code does,
// and once through RawSyscall, which keeps the thread's Go P.
//
//	go run ./bench/stall [-for 3s] [-host=true] [-vm=true]
//
// Needs root (SCHED_FIFO); it kills only the neighbours it started.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/oom-guard/oom-guard/internal/testenv/vm"
)

// envNeighbour makes the binary (or the test binary, in the VM) a
// neighbour process of that kind instead.
const envNeighbour = "OOMGUARD_STALL_NEIGHBOUR"

// envFor passes -for to the VM; vmTable is the file the VM's rows come in.
const (
	envFor  = "OOMGUARD_STALL_FOR"
	vmTable = "stall.txt"
)

func main() {
	if kind := os.Getenv(envNeighbour); kind != "" {
		runNeighbour(kind)
		return
	}
	d := flag.Duration("for", 3*time.Second, "how long each cell of the table sleeps and wakes")
	onHost := flag.Bool("host", true, "measure on this machine")
	inVM := flag.Bool("vm", true, "measure in the cgroup v2 VM (internal/testenv/vm; scripts/vm-kernel)")
	flag.Parse()
	if *d <= 0 {
		fmt.Fprintln(os.Stderr, "-for must be positive")
		os.Exit(2)
	}
	var rows []string
	failed := false
	if *onHost {
		r, err := measureAll("host", *d, os.Args[0])
		rows = append(rows, r...)
		failed = report(err, failed)
	}
	if *inVM {
		r, err := runInVM(*d)
		rows = append(rows, r...)
		failed = report(err, failed)
	}
	printTable(os.Stdout, rows)
	if failed {
		os.Exit(1)
	}
}

func report(err error, failed bool) bool {
	if err != nil {
		fmt.Fprintln(os.Stderr, "stall:", err)
		return true
	}
	return failed
}

// runInVM runs the measurement in the VM (TestStallInGuest) and returns
// its rows.
func runInVM(d time.Duration) ([]string, error) {
	fmt.Fprintln(os.Stderr, "booting the cgroup v2 VM (emulated: slow)...")
	res, err := vm.BootCommand("./bench/stall", vm.Options{
		Run: "^TestStallInGuest$", Env: []string{envFor + "=" + d.String()},
		Timeout: 2*time.Minute + 8*d, MemoryMiB: 1024,
	})
	if err != nil {
		return nil, err
	}
	for _, t := range res.Tests {
		if t.Result != "pass" {
			return nil, fmt.Errorf("%s in the VM: %s\n%s", t.Name, t.Result, t.Output)
		}
	}
	table, ok := res.Files[vmTable]
	if !ok {
		return nil, fmt.Errorf("the VM sent back no %s", vmTable)
	}
	return strings.Split(strings.TrimSpace(string(table)), "\n"), nil
}

func printTable(out io.Writer, rows []string) {
	fmt.Fprintln(out, "| where | sleeps through | neighbour | wake-ups | late p50 | late p99 | late max | > 1 ms late, per s | > 10 ms late, per s |")
	fmt.Fprintln(out, "|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Fprintln(out, r)
	}
}
