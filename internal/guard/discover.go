package guard

import (
	"path"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/cgroup"
)

// walk lists every cgroup under the root with its limit. It only reads, so
// it runs off the loop (walker); the loop applies the result.
func (g *Guard) walk() map[string]uint64 {
	found := map[string]uint64{}
	err := g.mem.FS().Walk("/", func(rel string) error {
		limit, err := g.mem.Limit(rel)
		if err != nil {
			if !cgroup.IsNotExist(err) {
				klog.Warningf("cgroup %s: %v", rel, err)
			}
			return nil
		}
		found[rel] = limit
		return nil
	})
	if err != nil {
		klog.Errorf("walk %s: %v", g.mem.FS().Root, err)
	}
	return found
}

func (g *Guard) walker(quit <-chan struct{}) {
	tick := time.NewTicker(g.cfg.WalkInterval)
	defer tick.Stop()
	for {
		select {
		case <-quit:
			return
		case <-tick.C:
		case <-g.walkAsk:
		}
		found := g.walk()
		select {
		case g.walks <- found:
			g.poller.Wake()
		case <-quit:
			return
		}
	}
}

// askWalk requests a full walk (after an inotify overflow or reset).
func (g *Guard) askWalk() {
	select {
	case g.walkAsk <- struct{}{}:
	default:
	}
}

// applyWalk reconciles what a walk found with what the loop knows.
func (g *Guard) applyWalk(found map[string]uint64) {
	for rel, limit := range found {
		c, ok := g.known[rel]
		if !ok {
			g.add(rel)
			continue
		}
		if limit != c.limit {
			// The walk read its limits a while ago, off the loop; inotify
			// may have brought a newer one since. Read it again rather
			// than let a stale walk unguard a cgroup just armed.
			g.refreshLimit(c)
		}
	}
	for rel, c := range g.known {
		if _, ok := found[rel]; !ok && !g.mem.FS().Exists(rel) {
			g.forget(c)
		}
	}
}

// add starts knowing a cgroup: inotify on its directory, its kernel OOM
// count as the baseline, and a guard if it has a limit. The limit is read
// after the watch is in place: a runtime creates a container's cgroup and
// writes its limit a moment later, and a limit written between an earlier
// read and the watch would go unseen until the next full walk.
func (g *Guard) add(rel string) {
	c := &cg{rel: rel, limit: cgroup.Unlimited}
	g.known[rel] = c
	g.watchDir(rel)
	if n, err := g.mem.OOMKills(rel); err == nil {
		c.oomKills = n
	}
	if n, err := g.mem.OOMGroupKills(rel); err == nil {
		c.groupKills = n
	}
	limit, err := g.mem.Limit(rel)
	if err != nil {
		if cgroup.IsNotExist(err) {
			g.forget(c)
		}
		return
	}
	g.setLimit(c, limit)
}

// addTree adds a new cgroup and whatever was created below it before its
// inotify watch was in place.
func (g *Guard) addTree(rel string) {
	_ = g.mem.FS().Walk(rel, func(sub string) error {
		if _, ok := g.known[sub]; !ok {
			g.add(sub)
		}
		return nil
	})
}

// setLimit guards, re-arms or unguards a cgroup for a (new) limit.
func (g *Guard) setLimit(c *cg, limit uint64) {
	c.limit = limit
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
}

// forgetTree forgets rel and everything below it.
func (g *Guard) forgetTree(rel string) {
	for r, c := range g.known {
		if r == rel || strings.HasPrefix(r, rel+"/") {
			g.forget(c)
		}
	}
}

func (g *Guard) onInotify() {
	changes, overflow, err := g.inotify.Read()
	if err != nil {
		klog.Errorf("inotify: %v", err)
	}
	if overflow {
		klog.Warning("inotify queue overflowed: walking the whole hierarchy")
		g.askWalk()
	}
	root := strings.TrimSuffix(g.mem.FS().Root, "/")
	for _, ch := range changes {
		dir := "/" + strings.TrimPrefix(strings.TrimPrefix(ch.Dir, root), "/")
		switch {
		case ch.Name == "" && ch.Removed():
			g.forgetTree(dir)
		case ch.IsDir() && ch.Created():
			g.addTree(path.Join(dir, ch.Name))
		case ch.IsDir() && ch.Removed():
			g.forgetTree(path.Join(dir, ch.Name))
		case ch.Modified() && ch.Name == g.mem.LimitFile():
			if c, ok := g.known[dir]; ok {
				g.refreshLimit(c)
			}
		}
	}
}

func (g *Guard) refreshLimit(c *cg) {
	limit, err := g.mem.Limit(c.rel)
	if err != nil {
		if cgroup.IsNotExist(err) {
			g.forget(c)
		}
		return
	}
	if limit != c.limit {
		g.setLimit(c, limit)
	}
}
