package kill

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/cgroup"
)

// ErrGone means the process exited (or its PID was reused) before the kill.
var ErrGone = errors.New("process already gone")

// Target is a chosen victim whose pidfd is open: a signal through it can
// only ever reach the process that was inspected, whatever happens to its
// PID meanwhile. The guard opens it ahead of need (see internal/guard).
type Target struct {
	Candidate
	pidfd int
}

// Open opens a pidfd for c and checks the PID still names the process that
// was inspected (same start time).
func (p Proc) Open(c Candidate) (*Target, error) {
	pidfd, err := unix.PidfdOpen(c.Pid, 0)
	if err != nil {
		if err == unix.ESRCH {
			return nil, fmt.Errorf("pid %d (%s): %w", c.Pid, c.Comm, ErrGone)
		}
		return nil, fmt.Errorf("pidfd_open %d (%s): %w", c.Pid, c.Comm, err)
	}
	if st, err := p.StartTime(c.Pid); err != nil || st != c.StartTime {
		unix.Close(pidfd)
		return nil, fmt.Errorf("pid %d (%s): %w", c.Pid, c.Comm, ErrGone)
	}
	return &Target{Candidate: c, pidfd: pidfd}, nil
}

// Kill sends SIGKILL through the pidfd, then has the kernel release the
// victim's memory at once (process_mrelease, 5.15+) instead of waiting for
// it to exit; the release runs in the background and owns the pidfd from
// then on. It returns when the signal was sent. A Target is killed once.
func (t *Target) Kill() (time.Time, error) {
	if t.pidfd < 0 {
		return time.Time{}, fmt.Errorf("pid %d (%s): already used", t.Pid, t.Comm)
	}
	err := unix.PidfdSendSignal(t.pidfd, unix.SIGKILL, nil, 0)
	sent := time.Now()
	if err != nil {
		t.Close()
		if err == unix.ESRCH {
			return time.Time{}, fmt.Errorf("pid %d (%s): %w", t.Pid, t.Comm, ErrGone)
		}
		return time.Time{}, fmt.Errorf("kill pid %d (%s): %w", t.Pid, t.Comm, err)
	}
	go release(t.pidfd)
	t.pidfd = -1
	return sent, nil
}

// Inspected is the process as it was looked at when chosen.
func (t *Target) Inspected() Candidate { return t.Candidate }

// Close gives up a Target that will not be killed.
func (t *Target) Close() {
	if t != nil && t.pidfd >= 0 {
		unix.Close(t.pidfd)
		t.pidfd = -1
	}
}

// Process kills one candidate: Open, then Kill.
func (p Proc) Process(c Candidate) (time.Time, error) {
	t, err := p.Open(c)
	if err != nil {
		return time.Time{}, err
	}
	return t.Kill()
}

// release reaps the killed process's memory from this thread. EINVAL means
// the victim is not yet or no longer dying in a way mrelease can help, ESRCH
// that it is gone: both fine. ENOSYS: a kernel before 5.15.
func release(pidfd int) {
	defer unix.Close(pidfd)
	for i := 0; i < 3; i++ {
		_, _, errno := unix.Syscall(unix.SYS_PROCESS_MRELEASE, uintptr(pidfd), 0, 0)
		if errno != unix.EINVAL {
			return
		}
		// SIGKILL is delivered asynchronously: give the victim a moment to
		// start exiting, then try once more.
		time.Sleep(time.Millisecond)
	}
}

// Cgroup kills every process in rel and its descendants. With a v1 freezer
// for the same cgroup, the cgroup is frozen first (no fork escapes the kill,
// no process runs on to allocate), every process gets SIGKILL, and the
// cgroup is thawed so they can die. Without one it sweeps until the cgroup
// is empty. It returns the processes it signalled.
func (p Proc) Cgroup(fs *cgroup.FS, freezer *cgroup.FS, rel string, self int) ([]Candidate, error) {
	var fr cgroupFreezer
	if freezer != nil {
		fr = v1Freezer{freezer}
	}
	killed, _, err := p.killEach(fs, fr, rel, self, nil)
	return killed, err
}

// killEach signals the processes of rel one by one, frozen first where fr
// can freeze them, skipping self and those spare says to. The time is when
// the first signal was sent.
func (p Proc) killEach(fs *cgroup.FS, fr cgroupFreezer, rel string, self int, spare func(Candidate) bool) ([]Candidate, time.Time, error) {
	var first time.Time
	frozen := false
	if fr != nil {
		frozen = fr.freeze(rel)
		defer fr.thaw(rel)
	}
	var killed []Candidate
	seen := map[int]bool{}
	rounds := 1
	if !frozen {
		rounds = 10
	}
	for i := 0; i < rounds; i++ {
		cands, err := Candidates(fs, p, rel, cgroup.Unlimited)
		if err != nil && len(cands) == 0 {
			return killed, first, err
		}
		n := 0
		for _, c := range cands {
			if c.Pid == self || seen[c.Pid] || spare != nil && spare(c) {
				continue
			}
			if sent, err := p.Process(c); err == nil {
				if first.IsZero() {
					first = sent
				}
				killed = append(killed, c)
				n++
			}
			seen[c.Pid] = true
		}
		if n == 0 {
			break
		}
	}
	if len(killed) == 0 {
		return nil, first, fmt.Errorf("cgroup %s: %w", fs.Path(rel, ""), ErrNoVictim)
	}
	return killed, first, nil
}

// killAtOnce kills every process of rel and its descendants with one
// write to cgroup.kill (v2, 5.14+): the kernel signals them all, those
// forked meanwhile too. Each one listed beforehand has its memory released
// at once through its pidfd (see Kill). ok is false where the kernel has
// no cgroup.kill: the caller kills them one by one.
func (p Proc) killAtOnce(fs *cgroup.FS, rel string) (killed []Candidate, sent time.Time, ok bool, err error) {
	cands, err := Candidates(fs, p, rel, cgroup.Unlimited)
	if err != nil && len(cands) == 0 {
		return nil, sent, true, err
	}
	if len(cands) == 0 {
		return nil, sent, true, fmt.Errorf("cgroup %s: %w", fs.Path(rel, ""), ErrNoVictim)
	}
	var targets []*Target
	for _, c := range cands {
		if t, err := p.Open(c); err == nil {
			targets = append(targets, t)
		}
	}
	err = fs.WriteFile(rel, "cgroup.kill", "1")
	sent = time.Now()
	if err != nil {
		for _, t := range targets {
			t.Close()
		}
		if errors.Is(err, os.ErrNotExist) && fs.Exists(rel) {
			return nil, time.Time{}, false, nil
		}
		return nil, time.Time{}, true, err
	}
	for _, t := range targets {
		go release(t.pidfd)
		t.pidfd = -1
	}
	return cands, sent, true, nil
}

// cgroupFreezer stops every task of a cgroup sub-tree so that none forks
// or runs on while they are killed one by one.
type cgroupFreezer interface {
	freeze(rel string) bool
	thaw(rel string)
}

// v1Freezer is the v1 freezer hierarchy at the memory cgroup's place.
type v1Freezer struct{ fs *cgroup.FS }

func (f v1Freezer) freeze(rel string) bool { return f.fs.Exists(rel) && freeze(f.fs, rel) }
func (f v1Freezer) thaw(rel string)        { thaw(f.fs, rel) }

// v2Freezer is cgroup.freeze (5.2+) in the unified hierarchy itself.
type v2Freezer struct{ fs *cgroup.FS }

func (f v2Freezer) freeze(rel string) bool {
	if err := f.fs.WriteFile(rel, "cgroup.freeze", "1"); err != nil {
		return false
	}
	deadline := time.Now().Add(50 * time.Millisecond)
	for {
		ev, err := f.fs.ReadFile(rel, "cgroup.events")
		if err == nil && bytes.Contains(ev, []byte("frozen 1\n")) {
			return true
		}
		if err != nil || time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func (f v2Freezer) thaw(rel string) { _ = f.fs.WriteFile(rel, "cgroup.freeze", "0") }

// freeze asks the v1 freezer to stop every task in rel and waits briefly
// for it. A freeze that does not complete (a task stuck in the kernel) is
// not an error: the kill goes ahead.
func freeze(freezer *cgroup.FS, rel string) bool {
	if err := freezer.WriteFile(rel, "freezer.state", "FROZEN"); err != nil {
		return false
	}
	deadline := time.Now().Add(50 * time.Millisecond)
	for {
		state, err := freezer.ReadFile(rel, "freezer.state")
		if err == nil && string(state) == "FROZEN\n" {
			return true
		}
		if err != nil || time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func thaw(freezer *cgroup.FS, rel string) {
	_ = freezer.WriteFile(rel, "freezer.state", "THAWED")
}
