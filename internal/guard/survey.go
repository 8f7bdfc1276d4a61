package guard

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/cgroup"
)

// The surveyor is the goroutine that walks the hierarchy (every
// --walkIntervalSeconds, and when the loop asks after an inotify overflow)
// and re-creates the inotify watches (every --inotifyResetSeconds): with
// 10,000 cgroups that is 10,000 inotify_add_watch calls and 10,000 reads of
// a limit, tens of milliseconds the loop could not serve a crossing in. It
// shares no memory with the loop: the loop hands it, through channels,
// what it learnt since the last time (its journal); the surveyor keeps
// from those its own copy of what the loop knows (the shadow), compares
// its walk with it, and hands the loop only the differences, which the
// loop applies in small batches (discover.go). A new inotify instance is
// the surveyor's until it is handed over whole, every directory watched.

// entry is one cgroup in the journal: known with a limit, or forgotten.
type entry struct {
	limit uint64
	gone  bool
}

// noteKnown records that the loop knows c with its current limit.
func (g *Guard) noteKnown(c *cg) { g.journal[c.rel] = entry{limit: c.limit} }

// noteGone records that the loop forgot rel.
func (g *Guard) noteGone(rel string) { g.journal[rel] = entry{gone: true} }

// handJournal gives the surveyor what the loop learnt since it last asked.
func (g *Guard) handJournal() {
	g.journals <- g.journal // buffered, and one ask at a time: never blocks
	g.journal = map[string]entry{}
}

// reset is a new inotify instance with every directory watched, or why
// there is none.
type reset struct {
	in  DirWatcher
	err error
}

// found is one cgroup as a walk found it.
type found struct {
	rel   string
	limit uint64
}

var errStopped = errors.New("guard stopping")

func (g *Guard) surveyor(quit <-chan struct{}) {
	tick := time.NewTicker(g.cfg.WalkInterval)
	defer tick.Stop()
	shadow := map[string]uint64{}
	first := true // the start's walk is handed over even if it finds nothing
	for {
		rewatch := false
		select {
		case <-quit:
			return
		case <-tick.C:
		case <-g.walkAsk:
		case <-g.resetWork:
			rewatch = true
		}
		if !g.surveyOnce(shadow, rewatch, first, quit) {
			return
		}
		first = false
	}
}

// surveyOnce walks (re-watching everything in a new inotify instance if
// rewatch), hands the instance over, then the differences from what the
// loop knows; false if the guard stops meanwhile. A refused reset makes
// no walk, but at the start.
func (g *Guard) surveyOnce(shadow map[string]uint64, rewatch, first bool, quit <-chan struct{}) bool {
	var in DirWatcher
	if rewatch {
		var err error
		if in, err = g.kernel.NewWatcher(); err != nil {
			if !g.handReset(reset{err: err}, quit) {
				return false
			}
			if !first {
				return true
			}
			in = nil
		}
	}
	all, err := g.survey(in, quit)
	if errors.Is(err, errStopped) {
		closeWatcher(in)
		return false
	}
	if in != nil {
		r := reset{in: in}
		if err != nil {
			// Fewer watches than the loop has now (a directory not
			// watched, or not listed): keep those.
			closeWatcher(in)
			r = reset{err: err}
		}
		if !g.handReset(r, quit) {
			return false
		}
		if err != nil && !first {
			return true
		}
	}
	if !g.syncShadow(shadow, quit) {
		return false
	}
	diff := compare(all, shadow, err == nil)
	if len(diff) == 0 && !first {
		return true
	}
	select {
	case g.walks <- diff:
		g.poller.Wake()
		return true
	case <-quit:
		return false
	}
}

func closeWatcher(in DirWatcher) {
	if in != nil {
		in.Close()
	}
}

// handReset hands the loop a reset's outcome; false if the guard stops.
func (g *Guard) handReset(r reset, quit <-chan struct{}) bool {
	select {
	case g.resets <- r:
		g.poller.Wake()
		return true
	case <-quit:
		closeWatcher(r.in)
		return false
	}
}

// survey lists every cgroup under the root with its limit; with an error,
// those it could list before the walk stopped. With in, it
// watches each directory first: a sub-cgroup made after the watch is in
// place is in in's queue, one made before is in the listing that follows,
// so no directory falls between the two.
func (g *Guard) survey(in DirWatcher, quit <-chan struct{}) ([]found, error) {
	var all []found
	var watchErr error
	err := g.mem.FS().Walk("/", func(rel string) error {
		select {
		case <-quit:
			return errStopped
		default:
		}
		if in != nil {
			if err := in.Add(g.absPath(rel)); err != nil && !cgroup.IsNotExist(err) {
				watchErr = err
				return err
			}
		}
		limit, err := g.mem.Limit(rel)
		if err != nil {
			if !cgroup.IsNotExist(err) && !g.surveyWarned {
				klog.Warningf("cgroup %s: %v (said once until a walk succeeds)", rel, err)
				g.surveyWarned = true
			}
			return nil
		}
		all = append(all, found{rel, limit})
		return nil
	})
	switch {
	case errors.Is(err, errStopped):
		return nil, err
	case watchErr != nil:
		return nil, fmt.Errorf("walk %s: %w", g.mem.FS().Root, watchErr)
	case err != nil:
		// Out of fds, say: what was listed is handed over, and nothing
		// is taken for vanished.
		if !g.surveyWarned {
			klog.Errorf("walk %s: %v (said once until a walk succeeds)", g.mem.FS().Root, err)
			g.surveyWarned = true
		}
		return all, fmt.Errorf("walk %s: %w", g.mem.FS().Root, err)
	}
	g.surveyWarned = false
	return all, nil
}

// syncShadow brings the shadow up to what the loop knows now; false if
// the guard stops.
func (g *Guard) syncShadow(shadow map[string]uint64, quit <-chan struct{}) bool {
	select {
	case g.journalAsk <- struct{}{}:
		g.poller.Wake()
	case <-quit:
		return false
	}
	select {
	case j := <-g.journals:
		applyJournal(shadow, j)
		return true
	case <-quit:
		return false
	}
}

func applyJournal(shadow map[string]uint64, journal map[string]entry) {
	for rel, e := range journal {
		if e.gone {
			delete(shadow, rel)
		} else {
			shadow[rel] = e.limit
		}
	}
}

// compare is what a walk found that the loop (as the shadow says) does
// not know: cgroups appeared with a limit, limits moved, cgroups appeared
// without a limit (each as walked, parents first), and, after a complete
// walk, cgroups vanished. The limited come first: at the start, with ten
// unlimited cgroups to each limited one, their registrations, the slow
// part, begin at once.
func compare(all []found, shadow map[string]uint64, complete bool) []change {
	var diff, moved, unlimited []change
	seen := make(map[string]struct{}, len(all))
	for _, f := range all {
		seen[f.rel] = struct{}{}
		switch limit, ok := shadow[f.rel]; {
		case !ok && f.limit == cgroup.Unlimited:
			unlimited = append(unlimited, change{appeared, f.rel})
		case !ok:
			diff = append(diff, change{appeared, f.rel})
		case limit != f.limit:
			moved = append(moved, change{limitMoved, f.rel})
		}
	}
	diff = append(append(diff, moved...), unlimited...)
	if !complete {
		return diff
	}
	var gone []change
	for rel := range shadow {
		if _, ok := seen[rel]; !ok {
			gone = append(gone, change{vanished, rel})
		}
	}
	slices.SortFunc(gone, func(a, b change) int { return strings.Compare(a.rel, b.rel) })
	return append(diff, gone...)
}
