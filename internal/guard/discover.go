package guard

import (
	"path"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/cgroup"
)

// What the loop learns of the hierarchy comes as changes: from inotify
// (read on the loop, a few at a time) and from the surveyor (survey.go),
// which walks, re-watches and compares off the loop and hands over only
// the differences. Changes wait in a queue that the loop works through in
// small batches between two waits, so that a thousand new cgroups, or a
// walk that finds ten thousand, never keep it from a crossing for more
// than about changeBudget.
type changeKind uint8

const (
	// appeared: found by a walk, unknown to the loop when compared.
	appeared changeKind = iota
	// vanished: known to the loop when compared, not found by the walk.
	vanished
	// limitMoved: found by a walk with a limit other than the loop's.
	limitMoved
	// created: inotify saw the directory made (with whatever was made
	// below it before its own watch).
	created
	// removed: inotify saw the directory (and so everything below) go.
	removed
	// limitWritten: inotify saw the limit file written.
	limitWritten
)

type change struct {
	kind changeKind
	rel  string
}

// A batch of changes ends after changeBatch changes or changeBudget of
// wall time, whichever comes first; adding a cgroup costs the loop a few
// map entries and a reading queued for the registrars (readings.go; its
// watch and reads are theirs), forgetting one a few closes.
const (
	changeBatch  = 256
	changeBudget = 500 * time.Microsecond
)

// queue appends changes for the loop to apply.
func (g *Guard) queue(chs ...change) { g.changes = append(g.changes, chs...) }

// applyChanges works through one batch of the queued changes.
func (g *Guard) applyChanges() {
	if len(g.changes) == 0 {
		return
	}
	start := time.Now()
	n := 0
	for n < len(g.changes) && n < changeBatch && (n == 0 || time.Since(start) < changeBudget) {
		g.apply(g.changes[n])
		n++
	}
	clear(g.changes[:n]) // let go of their strings
	g.changes = g.changes[n:]
	if len(g.changes) == 0 {
		g.changes = nil // the backing array of a large batch goes too
	}
	g.logStarted()
}

// apply brings one change into what the loop knows. A walk's changes were
// compared with what the loop knew a moment ago: each is checked against
// what it knows now.
func (g *Guard) apply(ch change) {
	c, known := g.known[ch.rel]
	switch ch.kind {
	case appeared:
		if !known {
			g.add(ch.rel)
		}
	case vanished:
		if known && !g.mem.FS().Exists(ch.rel) {
			g.forget(c)
		}
	case limitMoved, limitWritten:
		// The limit was read a while ago, off the loop (or not at all):
		// read it again rather than let a stale one unguard a cgroup
		// just armed.
		if known {
			g.refreshLimit(c)
		}
	case created:
		g.addTree(ch.rel)
	case removed:
		g.forgetTree(ch.rel)
	}
}

// add starts knowing a cgroup: inotify on its directory, its kernel OOM
// count as the baseline, and a guard if it has a limit, all read off the
// loop (readings.go). The limit is read after the watch is in place: a
// runtime creates a container's cgroup and writes its limit a moment
// later, and a limit written between an earlier read and the watch would
// go unseen until the next full walk.
func (g *Guard) add(rel string) { g.startRead(g.know(rel), g.inotify, false) }

// know makes rel known, unguarded, unread.
func (g *Guard) know(rel string) *cg {
	c := &cg{rel: rel, limit: cgroup.Unlimited, unread: true}
	g.known[rel] = c
	g.parents[path.Dir(rel)]++
	g.noteKnown(c)
	return c
}

// readAgain reads again a cgroup that could not be read before.
func (g *Guard) readAgain(c *cg) { g.startRead(c, nil, false) }

// addTree adds a new cgroup and whatever was created below it before its
// inotify watch was in place (read off the loop with it).
func (g *Guard) addTree(rel string) {
	c, ok := g.known[rel]
	switch {
	case !ok:
		g.startRead(g.know(rel), g.inotify, true)
	case !c.reading:
		// Known from a walk, which may have listed it before what was
		// made below it: read below it too.
		g.startRead(c, g.inotify, true)
	}
}

// setLimit guards, re-arms or unguards a cgroup for a (new) limit.
func (g *Guard) setLimit(c *cg, limit uint64) {
	c.limit = limit
	g.noteKnown(c)
	switch {
	case limit == cgroup.Unlimited:
		g.unguard(c)
		g.dropRetry(c)
	case !c.guarded(), limit != c.armedLimit:
		g.register(c)
	}
}

func (g *Guard) forget(c *cg) {
	g.unguard(c)
	g.dropRetry(c)
	g.inotify.Remove(g.absPath(c.rel))
	delete(g.known, c.rel)
	delete(g.timed, c)
	if p := path.Dir(c.rel); g.parents[p] > 1 {
		g.parents[p]--
	} else {
		delete(g.parents, p)
	}
	g.noteGone(c.rel)
}

// forgetTree forgets rel and everything below it. A cgroup directory can
// only be removed once empty, so below a removed one there is normally
// nothing left to forget: the scan over every known cgroup is for a
// directory moved away, and for the rare tree whose removals came first.
func (g *Guard) forgetTree(rel string) {
	if c, ok := g.known[rel]; ok {
		g.forget(c)
	}
	if !g.knownBelow(rel) {
		return
	}
	for r, c := range g.known {
		if strings.HasPrefix(r, rel+"/") {
			g.forget(c)
		}
	}
}

// knownBelow tells, without a scan, whether some known cgroup lies below
// rel: whether rel is the parent of one (a known cgroup's parent directory
// is known too, or gone with it).
func (g *Guard) knownBelow(rel string) bool {
	if rel == "/" {
		return len(g.known) > 0
	}
	return g.parents[rel] > 0
}

// onInotify reads what inotify has queued and queues it as changes.
func (g *Guard) onInotify() {
	changes, overflow, err := g.inotify.Read()
	if err != nil {
		klog.Errorf("inotify: %v", err)
	}
	if overflow {
		klog.Warning("inotify queue overflowed: walking the whole hierarchy")
		g.askWalk()
	}
	g.queueDirChanges(changes)
}

// refreshLimit reads c's limit again, off the loop; with a reading
// under way, once it is done.
func (g *Guard) refreshLimit(c *cg) {
	if c.reading {
		c.readMore = true
		return
	}
	if c.unread {
		return // read again at its retry
	}
	g.startRead(c, nil, false)
}

// askWalk requests a full walk (after an inotify overflow).
func (g *Guard) askWalk() {
	select {
	case g.walkAsk <- struct{}{}:
	default:
	}
}
