package kill

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/cgroup"
)

// OOMScoreAdjMin is the oom_score_adj that exempts a process from the
// kernel's OOM killer; the guard respects it the same way.
const OOMScoreAdjMin = -1000

// ErrNoVictim is returned when no process in the cgroup may be killed.
var ErrNoVictim = errors.New("no killable process")

// Eligible tells whether a candidate may be killed at all: never an exempt
// process (oom_score_adj -1000), never the guard itself, never a pod's
// sandbox ("pause"), which would take every container of the pod with it.
func Eligible(c Candidate, self int) bool {
	return c.OOMScoreAdj != OOMScoreAdjMin && c.Pid != self && c.Comm != "pause"
}

// Choose picks the victim the kernel's cgroup OOM killer would: the highest
// score (see Score); on a tie, the larger resident set. A dying candidate
// (Candidate.Dying) is never chosen: it was killed already.
func Choose(cands []Candidate, self int) (Candidate, bool) {
	var best Candidate
	found := false
	for _, c := range cands {
		if !Eligible(c, self) || c.Dying {
			continue
		}
		if !found || c.OOMScore > best.OOMScore ||
			c.OOMScore == best.OOMScore && rss(c) > rss(best) {
			best, found = c, true
		}
	}
	return best, found
}

func rss(c Candidate) uint64 { return c.Status.RSSKB() }

// AnyDying tells whether a process that may be killed is already dying of
// SIGKILL (a victim killed a moment ago, its memory not yet back). The kernel's
// OOM killer then kills nobody else and waits (oom_evaluate_task aborts on
// a task already being killed); so does the guard. It matters most where
// process_mrelease (5.15) is missing and memory comes back only as the
// victim exits.
func AnyDying(cands []Candidate, self int) bool {
	for _, c := range cands {
		if c.Dying && Eligible(c, self) {
			return true
		}
	}
	return false
}

// Candidates inspects every process of rel and its descendants, scoring
// them against the cgroup's limit (bytes; cgroup.Unlimited scores against
// the host's memory, as the kernel's global OOM killer would). Processes
// that exit meanwhile are skipped; one that cannot be read for another
// reason (EACCES: /proc mounted with hidepid) is not taken for exited: the
// list comes back with an error saying it is incomplete.
func Candidates(fs *cgroup.FS, proc Proc, rel string, limit uint64) ([]Candidate, error) {
	limitKB := limit / 1024
	if limit == cgroup.Unlimited {
		limitKB = hostMemKB()
	}
	var cands []Candidate
	var unread error
	err := fs.Walk(rel, func(cg string) error {
		pids, err := fs.Procs(cg, false)
		if err != nil {
			return err
		}
		for _, pid := range pids {
			c, err := proc.Inspect(pid, limitKB)
			switch {
			case cgroup.IsNotExist(err):
				continue // exited since cgroup.procs was read
			case err != nil:
				if unread == nil {
					unread = fmt.Errorf("pid %d: %w", pid, err)
				}
				continue
			}
			c.Cgroup = cg
			cands = append(cands, c)
		}
		return nil
	})
	if err == nil {
		err = unread
	}
	if err != nil {
		return cands, fmt.Errorf("list processes of %s: %w", fs.Path(rel, ""), err)
	}
	return cands, nil
}

// hostMemKB is MemTotal + SwapTotal, the kernel's total for a global OOM.
func hostMemKB() uint64 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 1
	}
	return (uint64(si.Totalram) + uint64(si.Totalswap)) * uint64(si.Unit) / 1024
}
