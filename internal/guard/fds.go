package guard

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// File descriptors: each guarded cgroup holds some (its eventfds and its
// kept-open files), and a kill needs some too (the victim's pidfd, /proc
// and cgroup files, the webhook's and the API server's connections). A
// guard whose cgroups took every fd could kill in none of them, so a new
// cgroup is registered only while fdReserve would stay free; the others
// wait with the registrations' back-off, counted in
// oomguard_unguarded_cgroups, and are guarded once cgroups go away or the
// limit is raised.
const (
	fdReserve = 64
	// filesPerGuard is what a guarded cgroup near its limit keeps open
	// beside its watches (cgroup.Handle: usage, limit, memory.stat;
	// files.go); one at rest keeps none.
	filesPerGuard = 3
	// fdsPerNew is a cgroup's fds assumed before any is guarded: its
	// watches (v1: one eventfd for both thresholds, one for the OOM
	// notification; v2 has fewer).
	fdsPerNew = 2
)

// countFds is the number of fds the process has open, read once at the
// start: what the guard holds besides its cgroups.
func countFds() int {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(fds)
}

// fdsShort fails when registering one more cgroup would leave fewer than
// fdReserve fds free: counted, from what the loop holds (its epoll set's
// watches and each guarded cgroup's files), what the registrations under
// way will hold, and what the process had at the start.
func (g *Guard) fdsShort() error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return nil
	}
	held := len(g.byFd) + filesPerGuard*g.withFiles
	per := fdsPerNew
	if g.guarded > 0 {
		per = (held + g.guarded - 1) / g.guarded
	}
	// A reading under way holds one file (or directory) open at a time.
	inUse := g.baseFds + held + per*(g.inFlight+1) + min(g.readsInFlight, g.cfg.Registrars)
	if uint64(inUse+fdReserve) > lim.Cur {
		return fmt.Errorf("%d fds in use of at most %d (RLIMIT_NOFILE), %d kept free for kills: %w", inUse, lim.Cur, fdReserve, unix.EMFILE)
	}
	return nil
}
