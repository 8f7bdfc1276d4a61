package kmsg

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.RunHogIfRequested()
	os.Exit(m.Run())
}

// requireKmsg skips (fails on CI) unless this process may read /dev/kmsg.
func requireKmsg(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	fd, err := unix.Open(DefaultPath, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		testenv.Skip(t, "needs a readable "+DefaultPath+": "+err.Error())
	}
	unix.Close(fd)
}

// startReader runs a Reader until the test ends.
func startReader(t *testing.T, cfg Config) *Reader {
	t.Helper()
	r, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- r.Run() }()
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if err := <-errc; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	return r
}

// TestRealKernelOOM makes the kernel OOM-kill a hog in a cgroup the test
// created, and checks that the Reader reports that kill: the hog's pid, the
// test's cgroup as both the victim's and the limited cgroup. With
// OOMGUARD_KMSG_CAPTURE=FILE it also saves the raw records it read (how
// testdata/self-linux-6.18-cgroup-v1.kmsg was made).
func TestRealKernelOOM(t *testing.T) {
	requireKmsg(t)
	cg := testenv.NewCgroup(t)
	rel := cg.Child(t, "victim", 32<<20)

	kills := make(chan Kill, 16)
	var mu sync.Mutex
	var capture []byte
	r, err := Open(Config{
		OnKill: func(k Kill) { kills <- k },
		OnLoss: func(l Loss) { t.Logf("kmsg loss: %+v", l) },
	})
	if err != nil {
		t.Fatal(err)
	}
	r.tap = func(b []byte) {
		mu.Lock()
		capture = append(capture, b...)
		mu.Unlock()
	}
	errc := make(chan error, 1)
	go func() { errc <- r.Run() }()
	defer func() {
		if err := r.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if err := <-errc; err != nil {
			t.Errorf("run: %v", err)
		}
	}()

	hog := testenv.HogCommand(testenv.HogSpec{}) // grows until killed
	cg.Start(t, rel, hog)
	pid := hog.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- hog.Wait() }()
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("hog %d ended with %v, want SIGKILL from the OOM killer", pid, err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("hog %d not OOM-killed within 60s", pid)
	}

	deadline := time.After(10 * time.Second)
	for {
		select {
		case k := <-kills:
			if k.Pid != pid {
				t.Logf("another kill on this machine meanwhile: %+v", k)
				continue
			}
			t.Logf("kill: %+v", k)
			w := want{pid: pid, comm: comm(os.Args[0]), uid: os.Getuid(), memcg: true, anonKB: k.AnonRSSKB}
			mu.Lock()
			summarized := strings.Contains(string(capture), fmt.Sprintf(",pid=%d,uid=", pid))
			mu.Unlock()
			if summarized {
				w.constraint, w.oomMemcg, w.taskMemcg, w.enriched = "CONSTRAINT_MEMCG", rel, rel, true
			} else {
				// Many OOMs within 5 s (go test -count=N) exhaust the
				// kernel's rate limit: the kill line comes alone, and the
				// Kill must still come, without invented context.
				t.Logf("the kernel rate-limited this report's summary")
			}
			checkKill(t, 0, k, w)
			if k.AnonRSSKB == 0 || k.AnonRSSKB > 64<<10 {
				t.Errorf("anon-rss %d kB, want within the 32 MiB limit's reach", k.AnonRSSKB)
			}
			if !k.HasOOMScoreAdj || k.Seq == 0 || k.Monotonic == 0 {
				t.Errorf("kill lacks oom_score_adj, seq or timestamp: %+v", k)
			}
			if path := os.Getenv("OOMGUARD_KMSG_CAPTURE"); path != "" {
				time.Sleep(500 * time.Millisecond) // let the oom_reaper line in
				mu.Lock()
				data := capture
				mu.Unlock()
				if err := os.WriteFile(path, data, 0o644); err != nil {
					t.Error(err)
				}
				t.Logf("captured %d bytes to %s (kill %+v)", len(data), path, k)
			}
			return
		case <-deadline:
			t.Fatalf("no kill of pid %d reported within 10s; stats %+v", pid, r.Stats())
		}
	}
}

// comm is what the kernel keeps of a program name: its base, 15 bytes.
func comm(prog string) string {
	if i := strings.LastIndexByte(prog, '/'); i >= 0 {
		prog = prog[i+1:]
	}
	if len(prog) > 15 {
		prog = prog[:15]
	}
	return prog
}

// TestRealKmsgPosition checks the positioning on the real device: a reader
// opened "from now" sees nothing older than a marker written after it opened,
// one opened FromBoot starts before it; and the kernel stamps what userspace
// writes as LOG_USER even when it asks for facility 0, which is what lets
// the parser ignore forged kill lines.
func TestRealKmsgPosition(t *testing.T) {
	requireKmsg(t)
	type seen struct {
		mu   sync.Mutex
		recs []Record
	}
	tapInto := func(s *seen) func([]byte) {
		return func(b []byte) {
			if r, err := ParseRecord(b); err == nil {
				s.mu.Lock()
				s.recs = append(s.recs, r)
				s.mu.Unlock()
			}
		}
	}
	var now, boot seen
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	opened := time.Duration(ts.Nano())
	rNow, err := Open(Config{})
	if err != nil {
		t.Fatal(err)
	}
	rNow.tap = tapInto(&now)
	rBoot, err := Open(Config{FromBoot: true})
	if err != nil {
		rNow.Close()
		t.Fatal(err)
	}
	rBoot.tap = tapInto(&boot)
	for _, r := range []*Reader{rNow, rBoot} {
		r := r
		done := make(chan error, 1)
		go func() { done <- r.Run() }()
		t.Cleanup(func() {
			r.Close()
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		})
	}

	marker := fmt.Sprintf("oomguard kmsg test marker %d-%d", os.Getpid(), time.Now().UnixNano())
	w, err := os.OpenFile(DefaultPath, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.WriteString("<3>" + marker + "\n") // asks for facility 0, level 3
	w.Close()
	if err != nil {
		t.Fatalf("write marker: %v", err)
	}

	find := func(s *seen) (first Record, m Record, ok bool) {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, r := range s.recs {
			if r.Text == marker {
				return s.recs[0], r, true
			}
		}
		return Record{}, Record{}, false
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		fNow, mNow, ok1 := find(&now)
		fBoot, _, ok2 := find(&boot)
		if ok1 && ok2 {
			// Records logged between Open and the marker are fine, older
			// ones are not. printk stamps with local_clock, which tracks
			// CLOCK_MONOTONIC closely but not exactly: allow a second.
			if fNow.Monotonic < opened-time.Second {
				t.Errorf("from-now reader began at seq %d stamped %v, before it was opened at %v", fNow.Seq, fNow.Monotonic, opened)
			}
			if fBoot.Seq >= mNow.Seq {
				t.Errorf("FromBoot reader began at seq %d, not before the marker %d", fBoot.Seq, mNow.Seq)
			}
			if mNow.Facility != 1 || mNow.Level != 3 {
				t.Errorf("marker stored as facility %d level %d, want 1 (LOG_USER) and 3", mNow.Facility, mNow.Level)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("marker not seen: from-now %v, from-boot %v", ok1, ok2)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
