package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	sleepFor = 200 * time.Microsecond
	// probePriority is above the guard loop's default (--rt-priority 2).
	probePriority = 3
)

var neighbours = []string{"none", "spin", "touch"}

// measureAll measures every sleep kind beside every neighbour for d each;
// self is the executable that becomes a neighbour (envNeighbour).
func measureAll(where string, d time.Duration, self string, args ...string) ([]string, error) {
	var rows []string
	for _, n := range neighbours {
		stop, err := startNeighbour(n, self, args...)
		if err != nil {
			return rows, err
		}
		for _, raw := range []bool{false, true} {
			lates, err := measure(d, raw)
			if err != nil {
				stop()
				return rows, err
			}
			rows = append(rows, row(where, raw, n, lates, d))
		}
		stop()
	}
	return rows, nil
}

// startNeighbour starts self as a neighbour of kind n ("none": nothing)
// and returns what kills it.
func startNeighbour(n, self string, args ...string) (stop func(), err error) {
	if n == "none" {
		return func() {}, nil
	}
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), envNeighbour+"="+n)
	cmd.Stderr = os.Stderr
	// The neighbour dies with this process, whatever ends it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start neighbour %s: %w", n, err)
	}
	time.Sleep(200 * time.Millisecond) // let it get going
	return func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}, nil
}

func runNeighbour(kind string) {
	switch kind {
	case "spin":
		for {
		}
	case "touch":
		for {
			b, err := unix.Mmap(-1, 0, 48<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
			if err != nil {
				fmt.Fprintln(os.Stderr, "neighbour:", err)
				os.Exit(1)
			}
			for i := 0; i < len(b); i += os.Getpagesize() {
				b[i] = 1
			}
			_ = unix.Munmap(b)
		}
	}
	fmt.Fprintf(os.Stderr, "unknown neighbour %q\n", kind)
	os.Exit(2)
}

// measure sleeps sleepFor again and again for d on a SCHED_FIFO thread and
// returns how late each wake-up came. raw sleeps through RawSyscall, which
// does not tell the Go scheduler, so the thread keeps its P.
func measure(d time.Duration, raw bool) ([]time.Duration, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fifo := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: probePriority}
	if err := unix.SchedSetAttr(0, &fifo, 0); err != nil {
		return nil, fmt.Errorf("SCHED_FIFO %d (needs root): %w", probePriority, err)
	}
	defer func() {
		normal := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_NORMAL}
		_ = unix.SchedSetAttr(0, &normal, 0)
	}()
	// Allocated up front: no allocation, so no GC work, while measuring.
	lates := make([]time.Duration, 0, int(d/sleepFor)+1)
	ts := unix.NsecToTimespec(sleepFor.Nanoseconds())
	for end := time.Now().Add(d); len(lates) < cap(lates); {
		t0 := time.Now()
		if t0.After(end) {
			break
		}
		if raw {
			_, _, _ = syscall.RawSyscall(syscall.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
		} else {
			_, _, _ = syscall.Syscall(syscall.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
		}
		lates = append(lates, time.Since(t0)-sleepFor)
	}
	return lates, nil
}

func row(where string, raw bool, neighbour string, lates []time.Duration, d time.Duration) string {
	via := "Syscall"
	if raw {
		via = "RawSyscall"
	}
	if len(lates) == 0 {
		return fmt.Sprintf("| %s | %s | %s | 0 | - | - | - | - | - |", where, via, neighbour)
	}
	slices.Sort(lates)
	var over1, over10 int
	for _, l := range lates {
		if l > time.Millisecond {
			over1++
		}
		if l > 10*time.Millisecond {
			over10++
		}
	}
	n := len(lates)
	secs := d.Seconds()
	return fmt.Sprintf("| %s | %s | %s | %d | %v | %v | %v | %.1f | %.1f |", where, via, neighbour, n,
		lates[n/2].Round(time.Microsecond), lates[n*99/100].Round(time.Microsecond), lates[n-1].Round(time.Microsecond),
		float64(over1)/secs, float64(over10)/secs)
}
