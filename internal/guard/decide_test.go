package guard

import (
	"strings"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/cgroup"
)

func TestThreshold(t *testing.T) {
	cfg := DefaultConfig()
	const M = 1 << 20
	for _, tc := range []struct{ limit, want uint64 }{
		{1000 * M, 980 * M},      // the seed's example: 2% of 1000M
		{10 * M, 9 * M},          // 2% is 0.2M: min margin 1M
		{4096 * M, 4066 * M},     // 2% is 82M: max margin 30M
		{1 * M, 1*M - 512*1024},  // margin never more than half the limit
		{64 * M, 64*M - 1342177}, // 2% of 64M
	} {
		if got := cfg.Threshold(tc.limit); got != tc.want {
			t.Errorf("Threshold(%d) = %d, want %d", tc.limit, got, tc.want)
		}
	}
}

// On v1 the kernel signals a crossing up to ThresholdLag late: the margin
// keeps MinMargin beyond that, and the ratio's larger margins stay.
func TestThresholdLag(t *testing.T) {
	cfg := DefaultConfig()
	const M, K = 1 << 20, 1 << 10
	cfg.ThresholdLag = 1536 * K // 2 CPUs' worth on 4 KiB pages
	for _, tc := range []struct{ limit, want uint64 }{
		{64 * M, 64*M - 2560*K},    // 2% is 1.28M: min margin 1M plus the lag
		{1000 * M, 980 * M},        // 2% is 20M: the lag changes nothing
		{128 * M, 128*M - 2684354}, // 2% is 2.56M, above 2.5M
		{4 * M, 2 * M},             // never more than half the limit
		{4096 * M, 4066 * M},       // max margin 30M
	} {
		if got := cfg.Threshold(tc.limit); got != tc.want {
			t.Errorf("Threshold(%d MiB) = %d, want %d", tc.limit/M, got, tc.want)
		}
	}
	cfg.MinMargin, cfg.MaxMargin = 1*M, 1*M // a max below the floor: the floor wins
	if got := cfg.Threshold(1000 * M); got != 1000*M-2560*K {
		t.Errorf("Threshold(1000 MiB) with max margin 1M = %d, want %d", got, 1000*M-2560*K)
	}
}

func TestEarlyThreshold(t *testing.T) {
	cfg := DefaultConfig()
	const M = 1 << 20
	for _, tc := range []struct{ limit, want uint64 }{
		{64 * M, 64*M - 1342177 - 64*M/20},    // 5% of the limit ahead: half the stand-down amount
		{1024 * M, 1024*M - 2*21474836},       // the margin (2%, 20.5M) exceeds 16M: one margin ahead
		{256 * M, 256*M - 5368709 - 13421772}, // 5% of 256M is 12.8M, under 16M
		{8 * M, 6 * M},                        // the min margin (1M) ahead
		{2 * M, 1 * M},                        // never below half the limit
	} {
		if got := cfg.EarlyThreshold(tc.limit); got != tc.want {
			t.Errorf("EarlyThreshold(%d) = %d, want %d", tc.limit, got, tc.want)
		}
	}
}

func TestAssessAndJudge(t *testing.T) {
	cfg := DefaultConfig()
	const M = 1 << 20
	for _, tc := range []struct {
		name string
		look Look
		want Verdict
	}{
		{"below", Look{Usage: 900 * M, Limit: 1000 * M, ArmedLimit: 1000 * M, SinceAction: -1}, Below},
		{"crossed", Look{Usage: 985 * M, Limit: 1000 * M, ArmedLimit: 1000 * M, SinceAction: -1}, Act},
		{"limit raised", Look{Usage: 985 * M, Limit: 2000 * M, ArmedLimit: 1000 * M, SinceAction: -1}, Rearm},
		{"limit lowered", Look{Usage: 100 * M, Limit: 500 * M, ArmedLimit: 1000 * M, SinceAction: -1}, Rearm},
		{"just acted", Look{Usage: 985 * M, Limit: 1000 * M, ArmedLimit: 1000 * M, SinceAction: 10 * time.Millisecond}, Cooling},
		{"acted long ago", Look{Usage: 985 * M, Limit: 1000 * M, ArmedLimit: 1000 * M, SinceAction: time.Second}, Act},
	} {
		if got := cfg.Assess(tc.look); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	if v := cfg.Judge(1000*M, 200*M); v != StandDown {
		t.Errorf("much cache: %v", v)
	}
	if v := cfg.Judge(1000*M, 5*M); v != Act {
		t.Errorf("little cache: %v", v)
	}
	cfg.ReclaimableRatio = 0
	if v := cfg.Judge(1000*M, 900*M); v != Act {
		t.Errorf("stand-down disabled: %v", v)
	}
}

func TestValidate(t *testing.T) {
	for _, mutate := range []func(*Config){
		func(c *Config) { c.MarginRatio = 0 },
		func(c *Config) { c.MarginRatio = 1 },
		func(c *Config) { c.MinMargin = c.MaxMargin + 1 },
		func(c *Config) { c.Policy = "reboot" },
		func(c *Config) { c.ReclaimableRatio = 1.5 },
		func(c *Config) { c.WalkInterval = 0 },
	} {
		cfg := DefaultConfig()
		mutate(&cfg)
		if cfg.Validate() == nil {
			t.Errorf("invalid config accepted: %+v", cfg)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	if PolicyContainer.Title() != "Container" {
		t.Fatal(PolicyContainer.Title())
	}
}

// The tripwire takes memory.high only where it is unset (at or above the
// limit) or still holds the tripwire of a guard that died; any other value
// is somebody else's and stays.
func TestTripwireBefore(t *testing.T) {
	const limit = 100 << 20
	threshold := DefaultConfig().Threshold(limit) // not a whole number of pages
	g := &Guard{}
	c := &cg{rel: "pod/ctr", armedLimit: limit, threshold: threshold}
	for _, tc := range []struct {
		name    string
		high    uint64
		restore uint64
		foreign bool
	}{
		{"unset", cgroup.Unlimited, cgroup.Unlimited, false},
		{"at the limit", limit, limit, false},
		{"above the limit", 2 * limit, 2 * limit, false},
		{"a dead guard's tripwire", pageFloor(threshold), cgroup.Unlimited, false},
		{"kubelet MemoryQoS, 0.9 of the limit", limit / 10 * 9, 0, true},
		{"between threshold and limit", limit - 4096, 0, true},
		{"a page under a dead guard's", pageFloor(threshold) - 4096, 0, true},
	} {
		restore, err := g.tripwireBefore(c, tc.high)
		if tc.foreign {
			if err == nil || !strings.Contains(err.Error(), "left as it is") {
				t.Errorf("%s: memory.high %d taken (restore %d, err %v); want it left alone", tc.name, tc.high, restore, err)
			}
			continue
		}
		if err != nil || restore != tc.restore {
			t.Errorf("%s: memory.high %d: restore %d, %v; want %d", tc.name, tc.high, restore, err, tc.restore)
		}
	}
}
