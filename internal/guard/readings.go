package guard

import (
	"errors"
	"path"
	"strings"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/notify"
)

// A cgroup the loop learns of is read off the loop: its inotify watch,
// its limit and its kernel OOM counts. Each is one system call, but one
// that can wait in the kernel: 3 to 38 ms measured on the loop under load
// (inotify_add_watch, and the first open of a new cgroup's
// memory.oom_control and memory.limit_in_bytes), a crossing unserved
// meanwhile. The loop knows the cgroup at once (unguarded, its limit
// unknown) and queues a reading for the registrars; when it is done, the
// loop takes the results in (takeReads) and guards the cgroup as before.
// One reading runs per cgroup at a time; another asked for meanwhile
// (a limit written) follows it.
//
// A watch is made in the instance the loop had when it asked, and adopted
// there when the reading is taken in: that instance is not closed before
// (watchRefs), and the events of the watch that came meanwhile are held
// by the instance until then (notify.Inotify.Adopt), so none is lost. A
// reading made in an instance since replaced by a reset is made again in
// the new one.

// reading is a registrar's work for one cgroup: watch its directory in in
// (nil: no watch), and, with tree, every directory below, each watched
// before it is listed (what was made before the cgroup's watch was in
// place); then read each one's limit and, for a first read, its OOM
// counts: the limit after the watch, so that a limit written meanwhile is
// an event.
type reading struct {
	c      *cg
	in     DirWatcher
	tree   bool
	counts bool      // c's OOM counts too (its first read); those below c always
	found  []readOut // c first, then what the tree held
}

// readOut is one directory as a reading found it.
type readOut struct {
	rel                         string
	wd                          int32 // the watch made; -1: none
	watchErr                    error
	limit, oomKills, groupKills uint64
	what                        string // which read failed
	err                         error
}

// startRead queues a reading of c, watched in in (nil: none); tree reads
// what lies below too.
func (g *Guard) startRead(c *cg, in DirWatcher, tree bool) {
	if c.reading {
		c.readMore = true
		return
	}
	c.reading = true
	g.readsInFlight++
	if in != nil {
		g.watchRefs[in]++
	}
	g.startRegistrars()
	g.regQueue.push(work{rd: &reading{c: c, in: in, tree: tree, counts: c.unread}})
}

// read runs on a registrar.
func (g *Guard) read(rd *reading) {
	if !rd.tree {
		rd.found = []readOut{g.readOne(rd.c.rel, rd.in, rd.counts)}
		return
	}
	err := g.mem.FS().Walk(rd.c.rel, func(rel string) error {
		rd.found = append(rd.found, g.readOne(rel, rd.in, rd.counts || rel != rd.c.rel))
		return nil
	})
	if err != nil {
		klog.V(2).Infof("cgroup %s: listing what was made below it: %v (found by the next walk)", rd.c.rel, err)
	}
}

// readOne watches and reads one directory.
func (g *Guard) readOne(rel string, in DirWatcher, counts bool) readOut {
	o := readOut{rel: rel, wd: -1}
	if in != nil {
		var err error
		if o.wd, err = in.Watch(g.absPath(rel)); err != nil {
			o.wd, o.watchErr = -1, err
		}
	}
	if counts {
		n, err := g.mem.OOMKills(rel)
		if errors.Is(err, cgroup.ErrNoOOMKillCounter) {
			n, err = 0, nil // before 4.13: kills are counted from the OOM eventfd (kernelkill.go)
		}
		if err != nil {
			o.what, o.err = "read", err
			return o
		}
		o.oomKills = n
		if groups, err := g.mem.OOMGroupKills(rel); err == nil {
			o.groupKills = groups
		}
	}
	if o.limit, o.err = g.mem.Limit(rel); o.err != nil {
		o.what = "read limit"
	}
	return o
}

// takeReads takes in every reading done.
func (g *Guard) takeReads() {
	for {
		select {
		case rd := <-g.readsDone:
			g.takeRead(rd)
		default:
			return
		}
	}
}

// takeRead brings a reading into what the loop knows. Its watches are
// adopted whatever became of the cgroup meanwhile: their events say what.
func (g *Guard) takeRead(rd *reading) {
	g.readsInFlight--
	defer g.logStarted()
	root := rd.c
	root.reading = false
	live := g.known[root.rel] == root
	for i, o := range rd.found {
		if rd.in != nil && o.wd >= 0 {
			g.queueDirChanges(rd.in.Adopt(g.absPath(o.rel), o.wd))
		}
		if !live {
			continue
		}
		c := root
		if i > 0 {
			if g.known[root.rel] != root {
				live = false // forgotten just now, and what is below it with it
				continue
			}
			if _, ok := g.known[o.rel]; ok {
				continue // known meanwhile, and read for itself
			}
			c = g.know(o.rel)
		}
		if o.watchErr != nil && !cgroup.IsNotExist(o.watchErr) {
			klog.Warningf("cgroup %s: %v (it is still found by the periodic walk)", o.rel, o.watchErr)
		}
		g.readInto(c, o, rd.counts || i > 0)
	}
	g.dropWatchRef(rd.in)
	if !live || g.known[root.rel] != root {
		return
	}
	switch {
	case rd.in != nil && rd.in != g.inotify:
		// Watched in an instance a reset replaced meanwhile: watch
		// (and read the limit) again in the one in use.
		g.startRead(root, g.inotify, rd.tree)
	case root.readMore:
		root.readMore = false
		g.startRead(root, nil, false)
	}
}

// readInto applies one directory's reads to c: the baseline of its kernel
// OOM counts (a first read), its limit. One that could not be read for
// want of a resource is read again later: with a baseline of 0 it would
// report as new every kill the kernel made before.
func (g *Guard) readInto(c *cg, o readOut, counts bool) {
	switch {
	case o.err == nil:
		if counts {
			c.oomKills, c.groupKills, c.unread = o.oomKills, o.groupKills, false
		}
		if counts || o.limit != c.limit {
			g.setLimit(c, o.limit)
		}
		if g.known[c.rel] == c && !c.registering && (c.guarded() || c.limit == cgroup.Unlimited) {
			g.dropRetry(c) // read again after a failure, and nothing more to do
		}
	case cgroup.IsNotExist(o.err):
		g.forget(c)
	default:
		c.unread = true
		g.retryLater(c, o.what, o.err)
	}
}

// dropWatchRef ends a reading's hold on in, and closes in if a reset
// replaced it and nothing else holds it.
func (g *Guard) dropWatchRef(in DirWatcher) {
	if in == nil {
		return
	}
	if g.watchRefs[in]--; g.watchRefs[in] > 0 {
		return
	}
	delete(g.watchRefs, in)
	if _, ok := g.retired[in]; ok {
		delete(g.retired, in)
		g.goAside(func() { in.Close() })
	}
}

// retireWatcher closes an instance a reset replaced, once no reading
// makes a watch in it any more. Out of the epoll set, nothing waits on it.
func (g *Guard) retireWatcher(old DirWatcher) {
	if g.watchRefs[old] > 0 {
		g.retired[old] = struct{}{}
		return
	}
	// Destroying an inotify instance waits for an SRCU grace period
	// (30 ms measured here), and a loop waiting for it misses what
	// happens meanwhile: it may be closed anywhere.
	g.goAside(func() { old.Close() })
}

// closeRetired closes the replaced instances still held, once the
// registrars have stopped.
func (g *Guard) closeRetired() {
	for in := range g.retired {
		in.Close()
	}
	clear(g.retired)
	clear(g.watchRefs)
}

// queueDirChanges queues what inotify says as changes.
func (g *Guard) queueDirChanges(changes []notify.DirChange) {
	if len(changes) == 0 {
		return
	}
	root := strings.TrimSuffix(g.mem.FS().Root, "/")
	for _, ch := range changes {
		dir := "/" + strings.TrimPrefix(strings.TrimPrefix(ch.Dir, root), "/")
		switch {
		case ch.Name == "" && ch.Removed():
			g.queue(change{removed, dir})
		case ch.IsDir() && ch.Created():
			g.queue(change{created, path.Join(dir, ch.Name)})
		case ch.IsDir() && ch.Removed():
			g.queue(change{removed, path.Join(dir, ch.Name)})
		case ch.Modified() && ch.Name == g.mem.LimitFile():
			g.queue(change{limitWritten, dir})
		}
	}
}
