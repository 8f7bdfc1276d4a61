package guard

import "github.com/oom-guard/oom-guard/internal/cgroup"

// A guarded cgroup's usage, limit and memory.stat are kept open (Files)
// only while it is near its limit: from its first look above the early
// threshold (a kill prepared there, or a crossing) until it is below that
// threshold again with nothing pending. The hot path reads them with one
// pread(2) each, as before. A cgroup at rest is read, rarely (the look
// after a registration, a crossing downwards), by opening the file, and
// costs neither the fds nor the kernel memory of open cgroup files (about
// 5 KiB each, charged to the guard: 15 KiB a cgroup with all three open,
// measured) nor their read buffer; nor is memory.stat, which only a kill
// reads, ever looked up in a cgroup that never nears its limit (each file
// looked up costs the guard a dentry and an inode).

// usageOf reads c's usage: through its Files while they are open, else
// from the file, which stays closed unless usage is above the early
// threshold.
func (g *Guard) usageOf(c *cg) (uint64, error) {
	if c.files != nil {
		return c.files.Usage()
	}
	usage, err := g.mem.Usage(c.rel)
	if err != nil || usage < c.early {
		return usage, err
	}
	files, err := g.filesOf(c)
	if err != nil {
		return usage, nil // read all the same; the files are opened at the next read
	}
	return files.Usage()
}

// peekUsage reads c's usage, through its Files if they are open, and
// opens none: the order of a batch of crossings is read before any is
// served, and each cgroup's files are opened when it is (dispatch).
func (g *Guard) peekUsage(c *cg) (uint64, error) {
	if c.files != nil {
		return c.files.Usage()
	}
	return g.mem.Usage(c.rel)
}

// crossed tells, for a watch that serves both thresholds, whether usage is
// at the threshold: the crossing, not the early threshold's.
func (g *Guard) crossed(c *cg) bool {
	usage, err := g.usageOf(c)
	return err != nil || usage >= c.threshold // an error is the look's to say
}

// limitOf reads c's limit, as usageOf its usage.
func (g *Guard) limitOf(c *cg) (uint64, error) {
	if c.files != nil {
		return c.files.Limit()
	}
	return g.mem.Limit(c.rel)
}

// statOf reads c's memory.stat through its Files, opening them: it is
// read on the way to a kill.
func (g *Guard) statOf(c *cg) (cgroup.Stat, error) {
	files, err := g.filesOf(c)
	if err != nil {
		return cgroup.Stat{}, err
	}
	return files.Stat()
}

// filesOf is c's open Files, opened now if c has none.
func (g *Guard) filesOf(c *cg) (Files, error) {
	if c.files == nil {
		f, err := g.mem.Handle(c.rel)
		if err != nil {
			return nil, err
		}
		c.files = f
		g.withFiles++
	}
	return c.files, nil
}

// closeFiles closes c's Files, if it has them open.
func (g *Guard) closeFiles(c *cg) {
	if c.files != nil {
		c.files.Close()
		c.files = nil
		g.withFiles--
	}
}

// restFiles closes c's Files once c is at rest: below its early
// threshold, with no kill prepared, no look, cooldown or kernel OOM count
// pending.
func (g *Guard) restFiles(c *cg, usage uint64) {
	if usage < c.early && c.prep == nil && c.recheckAt.IsZero() && c.oomCheckAt.IsZero() && !c.victimWatch && c.lastAction.IsZero() {
		g.closeFiles(c)
	}
}
