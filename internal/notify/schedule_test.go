package notify

import (
	"testing"
	"time"
)

// How long a cgroup may go unsampled: until it could reach its nearest
// level above, at the assumed growth, within the bounds.
func TestScheduleInterval(t *testing.T) {
	opts := DefaultV2Options()
	n := &V2Notifier{opts: opts, floor: 1 << 30} // 1 GiB/s
	lw := func(levels ...uint64) []*LevelWatch {
		var ws []*LevelWatch
		for _, l := range levels {
			ws = append(ws, &LevelWatch{level: l})
		}
		return ws
	}
	for _, tc := range []struct {
		name   string
		usage  uint64
		levels []*LevelWatch
		rate   float64
		want   time.Duration
	}{
		{"far below: headroom at the floor", 0, lw(512 << 20), 0, 500 * time.Millisecond},
		{"the nearest level above counts", 100 << 20, lw(612<<20, 228<<20), 0, 125 * time.Millisecond},
		{"a level already passed does not", 300 << 20, lw(228<<20, 812<<20), 0, 500 * time.Millisecond},
		{"seen growing faster: twice that", 0, lw(512 << 20), 1 << 30, 250 * time.Millisecond},
		{"close: never below MinInterval", 512<<20 - 4096, lw(512 << 20), 0, opts.MinInterval},
		{"huge headroom: never above MaxInterval", 0, lw(64 << 30), 0, opts.MaxInterval},
		{"above every level", 900 << 20, lw(512<<20, 812<<20), 0, opts.AboveInterval},
		{"no level", 0, nil, 0, opts.AboveInterval},
	} {
		if got := n.Interval(tc.usage, tc.levels, tc.rate); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestNewV2NotifierRejectsBadIntervals(t *testing.T) {
	for _, o := range []V2Options{
		{MinInterval: 0, MaxInterval: time.Second, AboveInterval: time.Millisecond},
		{MinInterval: time.Second, MaxInterval: time.Millisecond, AboveInterval: time.Millisecond},
		{MinInterval: time.Millisecond, MaxInterval: time.Second},
	} {
		if n, err := NewV2Notifier(nil, o); err == nil {
			n.Close()
			t.Errorf("%+v accepted", o)
		}
	}
}

func TestMeasureFaultRate(t *testing.T) {
	if r := MeasureFaultRate(); r <= 0 {
		t.Fatalf("fault rate %.0f B/s", r)
	}
}
