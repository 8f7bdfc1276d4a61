package kill

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/kernel"
)

// ErrGone means the process exited (or its PID was reused) before the kill.
var ErrGone = errors.New("process already gone")

// Target is a chosen victim, held so that a signal can only ever reach the
// process that was inspected, whatever happens to its PID meanwhile. The
// guard opens it ahead of need (see internal/guard). It works two ways,
// decided once per kernel (kernel.HasPidfd):
//
//   - with a pidfd (5.3+): the kernel ties the descriptor to the process,
//     so a signal through it never reaches another;
//   - without (3.10 to 5.2): by a /proc/PID directory descriptor, opened
//     and checked against the start time at Open, and kill(2) right after
//     that descriptor is found to still name a live task (see killByPid).
type Target struct {
	Candidate
	pidfd  int  // the open pidfd; -1 without one
	procfd int  // without pidfds: /proc/PID, opened at Open (O_PATH); -1 otherwise
	byPid  bool // no pidfd on this kernel: kill(2) after the procfd check
	used   bool
	exitfd int // after the kill: a pidfd of its own for ExitFd; -1 if none
	proc   Proc
	place  place // for Recheck, when opened by Killer.Open
}

// Open holds c for a kill and checks the PID still names the process that
// was inspected (same start time).
func (p Proc) Open(c Candidate) (*Target, error) {
	if !kernel.HasPidfd() {
		return p.openByPid(c)
	}
	pidfd, err := unix.PidfdOpen(c.Pid, 0)
	if err != nil {
		if err == unix.ESRCH {
			return nil, fmt.Errorf("pid %d (%s): %w", c.Pid, c.Comm, ErrGone)
		}
		if err == unix.ENOSYS {
			// The probe said otherwise; from now on, and for this
			// victim at once, the fallback.
			permanentFailure("pidfd_open", err)
			kernel.MarkMissing(kernel.Pidfd)
			return p.openByPid(c)
		}
		return nil, fmt.Errorf("pidfd_open %d (%s): %w", c.Pid, c.Comm, err)
	}
	if st, err := p.StartTime(c.Pid); err != nil || st != c.StartTime {
		unix.Close(pidfd)
		return nil, fmt.Errorf("pid %d (%s): %w", c.Pid, c.Comm, ErrGone)
	}
	return &Target{Candidate: c, pidfd: pidfd, procfd: -1, proc: p, place: noPlace, exitfd: -1}, nil
}

// openByPid opens /proc/PID and reads the start time through that very
// descriptor, so the descriptor is known to name the inspected process.
// (Such a descriptor keeps naming that process's struct pid: once the
// process is reaped, lookups through it fail, even if the number has been
// given to another process meanwhile.)
func (p Proc) openByPid(c Candidate) (*Target, error) {
	gone := fmt.Errorf("pid %d (%s): %w", c.Pid, c.Comm, ErrGone)
	dir := strings.TrimSuffix(p.path(c.Pid, ""), "/")
	procfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, gone
	}
	var buf [1024]byte
	data, err := readAt(procfd, "stat", buf[:])
	if err == nil {
		var st uint64
		if _, st, err = ParseStat(data); err == nil && st == c.StartTime {
			return &Target{Candidate: c, pidfd: -1, procfd: procfd, byPid: true, proc: p, place: noPlace, exitfd: -1}, nil
		}
	}
	unix.Close(procfd)
	return nil, gone
}

func readAt(dirfd int, name string, buf []byte) ([]byte, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// Kill sends SIGKILL, then (5.15+, with a pidfd) has the kernel release
// the victim's memory at once (process_mrelease) instead of waiting for it
// to exit; the release runs in the background and owns the pidfd from
// then on. It returns when the signal was sent. A Target is killed once.
func (t *Target) Kill() (time.Time, error) {
	if t.used {
		return time.Time{}, fmt.Errorf("pid %d (%s): already used", t.Pid, t.Comm)
	}
	t.used = true
	defer t.place.close() // after the signal: closing is not on the kill's path
	if t.byPid {
		return t.killByPid()
	}
	err := unix.PidfdSendSignal(t.pidfd, unix.SIGKILL, nil, 0)
	sent := time.Now()
	if err == unix.ENOSYS {
		// Not on any real kernel (pidfd_send_signal, 5.1, is older than
		// pidfd_open, 5.3), but a filtered one: the fallback, at once,
		// checked against the start time as at Open.
		permanentFailure("pidfd_send_signal", err)
		kernel.MarkMissing(kernel.Pidfd)
		unix.Close(t.pidfd)
		t.pidfd = -1
		fb, ferr := Proc{}.openByPid(t.Candidate)
		if ferr != nil {
			return time.Time{}, ferr
		}
		fb.used = true
		return fb.killByPid()
	}
	if err != nil {
		unix.Close(t.pidfd)
		t.pidfd = -1
		if err == unix.ESRCH {
			return time.Time{}, fmt.Errorf("pid %d (%s): %w", t.Pid, t.Comm, ErrGone)
		}
		if permanent(err) {
			permanentFailure("pidfd_send_signal", err)
		}
		return time.Time{}, fmt.Errorf("kill pid %d (%s): %w", t.Pid, t.Comm, err)
	}
	// The release owns the pidfd from here on; ExitFd gets a copy (one
	// fcntl, instead of a new pidfd_open and a /proc read).
	if fd, err := unix.FcntlInt(uintptr(t.pidfd), unix.F_DUPFD_CLOEXEC, 0); err == nil {
		t.exitfd = fd
	}
	releaseInBackground(t.pidfd)
	t.pidfd = -1
	return sent, nil
}

// ExitFd hands over, after Kill, a pidfd of the killed process: readable
// (poll, epoll) once it has exited. The caller closes it. Without one
// (killed by kill(2) on a kernel without pidfds, or no fd left), an error:
// ask Proc.Exited instead.
func (t *Target) ExitFd() (int, error) {
	fd := t.exitfd
	t.exitfd = -1
	if fd < 0 {
		return -1, fmt.Errorf("pid %d (%s): no pidfd to wait on", t.Pid, t.Comm)
	}
	return fd, nil
}

// maxCheckAge bounds how long before kill(2) the check may have been made
// (see killByPid).
const maxCheckAge = 100 * time.Microsecond

// killByPid signals the victim with kill(2), for a kernel without pidfds.
//
// PID reuse is ruled out as follows. A PID names another process only
// after the victim has exited and been reaped by its parent (a zombie
// keeps its PID, and killing a zombie does nothing), and the kernel's
// allocator has come round to that number again: Linux hands PIDs out
// cyclically (alloc_pid, idr_alloc_cyclic: the next free number above the
// last one given), so that takes up to pid_max forks, CentOS 7's default
// pid_max being 32768, which a busy node goes through in minutes, not
// microseconds. The inspected process is held by a /proc/PID descriptor,
// checked against its start time at Open (openByPid); right before the
// signal, on the guard's locked real-time loop thread, a lookup through
// that descriptor (faccessat) tells whether that process is still unreaped:
// it fails once it is, whoever has the number since. The lookup and
// kill(2) are back to back; a check that took longer than maxCheckAge
// (the thread was held off its CPU) is made again. What remains is the
// few hundred nanoseconds between the check's return and kill(2)'s entry,
// in which exit, reap and a wrap of the whole PID space would all have to
// happen. (The lookup costs about a microsecond; reading the start time
// again from /proc/PID/stat cost 20-40 us on a process faulting in memory
// at full speed, measured with bench/preempt.) The container kill does
// better still: it checks and signals while the v1 freezer holds the
// cgroup (killEach), and a frozen task cannot exit at all.
func (t *Target) killByPid() (time.Time, error) {
	defer t.closeProcfd()
	for try := 0; ; try++ {
		before := time.Now()
		_, _, errno := unix.Syscall6(unix.SYS_FACCESSAT, uintptr(t.procfd), uintptr(unsafe.Pointer(&statName[0])), unix.F_OK, 0, 0, 0)
		if errno != 0 {
			return time.Time{}, fmt.Errorf("pid %d (%s): %w", t.Pid, t.Comm, ErrGone)
		}
		if time.Since(before) > maxCheckAge && try < 3 {
			continue
		}
		err := unix.Kill(t.Pid, unix.SIGKILL)
		sent := time.Now()
		switch {
		case err == unix.ESRCH:
			return time.Time{}, fmt.Errorf("pid %d (%s): %w", t.Pid, t.Comm, ErrGone)
		case err != nil:
			if permanent(err) {
				permanentFailure("kill", err)
			}
			return time.Time{}, fmt.Errorf("kill pid %d (%s): %w", t.Pid, t.Comm, err)
		}
		return sent, nil
	}
}

// statName is "stat", NUL-terminated, for the raw faccessat: faccessat
// (2.6.16) rather than x/sys's Faccessat, which may use faccessat2 (5.8).
var statName = [...]byte{'s', 't', 'a', 't', 0}

func (t *Target) closeProcfd() {
	if t.procfd >= 0 {
		unix.Close(t.procfd)
		t.procfd = -1
	}
}

// Inspected is the process as it was looked at when chosen.
func (t *Target) Inspected() Candidate { return t.Candidate }

// SetCgroup records the cgroup the victim was found in when it was
// checked again at its kill.
func (t *Target) SetCgroup(rel string) { t.Cgroup = rel }

// Close gives up a Target that will not be killed.
func (t *Target) Close() {
	if t == nil {
		return
	}
	if t.pidfd >= 0 {
		unix.Close(t.pidfd)
		t.pidfd = -1
	}
	t.closeProcfd()
	t.place.close()
	if t.exitfd >= 0 {
		unix.Close(t.exitfd)
		t.exitfd = -1
	}
	t.used = true
}

// openAndKill kills one candidate: Open, then Kill.
func (p Proc) openAndKill(c Candidate) (time.Time, error) {
	t, err := p.Open(c)
	if err != nil {
		return time.Time{}, err
	}
	return t.Kill()
}

// releaseInBackground hands a killed victim's pidfd to release, where the
// kernel has process_mrelease (5.15); else it just closes it: the memory
// comes back as the victim exits.
func releaseInBackground(pidfd int) {
	if pidfd < 0 {
		return
	}
	if !kernel.HasProcessMrelease() {
		unix.Close(pidfd)
		return
	}
	go release(pidfd)
}

// release reaps the killed process's memory from this thread. EINVAL means
// the victim is not yet or no longer dying in a way mrelease can help, ESRCH
// that it is gone: both fine. ENOSYS: a kernel before 5.15.
func release(pidfd int) {
	defer unix.Close(pidfd)
	for i := 0; i < 3; i++ {
		_, _, errno := unix.Syscall(unix.SYS_PROCESS_MRELEASE, uintptr(pidfd), 0, 0)
		if errno == unix.ENOSYS {
			kernel.MarkMissing(kernel.ProcessMrelease)
		}
		if errno != unix.EINVAL {
			return
		}
		// SIGKILL is delivered asynchronously: give the victim a moment to
		// start exiting, then try once more.
		time.Sleep(time.Millisecond)
	}
}

// killEach signals the processes of rel one by one, frozen first where fr
// can freeze them, skipping self and those spare says to. The time is when
// the first signal was sent.
//
// Without pidfds (before 5.3) each is signalled by kill(2) after its
// /proc/PID descriptor, checked against its start time, is found to name
// an unreaped task (Target.killByPid). Frozen, that check is airtight: a
// task held by the freezer cannot run, so cannot exit, so its PID cannot
// be freed and handed to another process between the check and the
// signal (SIGKILL does not thaw a v1-frozen task; it dies at the thaw).
// Unfrozen (no freezer, or a freeze that did not complete), it is as safe
// as the single kill's.
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
			if sent, err := p.openAndKill(c); err == nil {
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
		releaseInBackground(t.pidfd)
		t.pidfd = -1
		t.Close()
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
	return freezeAndWait(f.fs, rel, "cgroup.freeze", "1", "cgroup.events", func(ev []byte) bool {
		return bytes.Contains(ev, []byte("frozen 1\n"))
	})
}

func (f v2Freezer) thaw(rel string) { _ = f.fs.WriteFile(rel, "cgroup.freeze", "0") }

// freeze asks the v1 freezer to stop every task in rel and waits briefly
// for it. A freeze that does not complete (a task stuck in the kernel) is
// not an error: the kill goes ahead.
func freeze(freezer *cgroup.FS, rel string) bool {
	return freezeAndWait(freezer, rel, "freezer.state", "FROZEN", "freezer.state", func(state []byte) bool {
		return string(state) == "FROZEN\n"
	})
}

// freezeAndWait writes value to control and waits, up to 50 ms, until
// status reads as frozen: a freeze that does not complete (a task stuck in
// the kernel) is no error, and the kill goes ahead unfrozen.
func freezeAndWait(fs *cgroup.FS, rel, control, value, status string, frozen func([]byte) bool) bool {
	if err := fs.WriteFile(rel, control, value); err != nil {
		return false
	}
	deadline := time.Now().Add(50 * time.Millisecond)
	for {
		data, err := fs.ReadFile(rel, status)
		if err == nil && frozen(data) {
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

// Permanent tells whether a kill failed for a reason that will not go
// away by trying again: the call is missing (ENOSYS) or not allowed
// (EPERM: no CAP_KILL over the victim, a seccomp or LSM policy).
func Permanent(err error) bool { return errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) }

func permanent(err error) bool { return Permanent(err) }

var failureHook atomic.Pointer[func(call, errno string)]

// SetPermanentFailureHook sets what counts permanent kill failures, by
// system call and errno name (report.Metrics.KillFailure). A missing call
// is counted once when it is found missing, then its fallback is used.
func SetPermanentFailureHook(f func(call, errno string)) { failureHook.Store(&f) }

func permanentFailure(call string, err error) {
	if f := failureHook.Load(); f != nil {
		name := err.Error()
		if e, ok := err.(unix.Errno); ok {
			name = unix.ErrnoName(e)
		}
		(*f)(call, name)
	}
}
