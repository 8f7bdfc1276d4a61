package testenv

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// StealClock measures the share of CPU time the hypervisor took from this
// machine's virtual CPUs (the steal column of /proc/stat): while a virtual
// CPU is not run, a guard thread woken on it waits, and the allocator on
// another goes on (internal/guard/affinity.go).
type StealClock struct {
	at    time.Time
	ticks uint64
	ok    bool
}

func StartSteal() StealClock {
	t, ok := stealTicks()
	return StealClock{at: time.Now(), ticks: t, ok: ok}
}

// Share is the stolen share of all CPUs' time since start, "?" where the
// kernel does not say.
func (s StealClock) Share() string {
	t, ok := stealTicks()
	elapsed := time.Since(s.at).Seconds() * float64(runtime.NumCPU())
	if !ok || !s.ok || elapsed <= 0 {
		return "?"
	}
	const userHZ = 100 // /proc/stat counts in USER_HZ, 100 on every Linux ABI
	return fmt.Sprintf("%.1f%%", 100*float64(t-s.ticks)/userHZ/elapsed)
}

// stealTicks is the machine's steal time in /proc/stat's "cpu" line (the
// 8th value, 2.6.11+).
func stealTicks() (uint64, bool) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, false
	}
	v, err := strconv.ParseUint(f[8], 10, 64)
	return v, err == nil
}
