package guard

import (
	"time"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/notify"
)

// Registering a v1 usage threshold costs the kernel a synchronize_rcu():
// 8 to 44 ms measured on this project's machines, two thresholds a cgroup.
// A loop that waited for them would be deaf to every other cgroup for that
// long (20 s at the start with 1,000 cgroups), so registrations run off the
// loop, several at once (their grace periods overlap), and the loop installs
// the finished watches. Until then a cgroup keeps whatever it had: nothing
// when new, its old thresholds when re-armed.
const registrars = 16

// registration is the notifications of one cgroup, made for one limit.
type registration struct {
	c                 *cg
	limit             uint64
	threshold, early  uint64
	full              bool // with the OOM watch: a first registration, not a re-arm
	thw, earlyw, oomw notify.Watch
	what              string // which step failed
	err               error
}

func (r *registration) close() {
	for _, w := range []notify.Watch{r.thw, r.earlyw, r.oomw} {
		if w != nil {
			w.Close()
		}
	}
}

// register starts the registration of c's notifications for its current
// limit. One runs per cgroup at a time: a limit that changes meanwhile is
// caught when the registration is installed.
func (g *Guard) register(c *cg) {
	if c.registering {
		return
	}
	c.registering = true
	g.inFlight++
	r := &registration{c: c, limit: c.limit, threshold: g.cfg.Threshold(c.limit), early: g.cfg.EarlyThreshold(c.limit), full: !c.guarded()}
	g.regs.Add(1)
	go func() {
		defer g.regs.Done()
		select {
		case g.regSlots <- struct{}{}:
		case <-g.quit:
			return
		}
		g.makeWatches(r)
		<-g.regSlots
		select {
		case g.registered <- r:
			g.poller.Wake()
		case <-g.quit:
			r.close()
		}
	}()
}

// makeWatches runs off the loop: the notifier only.
func (g *Guard) makeWatches(r *registration) {
	rel := r.c.rel
	if r.thw, r.err = g.notifier.Threshold(rel, r.threshold); r.err != nil {
		r.what = "register threshold"
		return
	}
	if r.earlyw, r.err = g.notifier.Threshold(rel, r.early); r.err != nil {
		r.what = "register early threshold"
		return
	}
	if r.full {
		if r.oomw, r.err = g.notifier.OOM(rel); r.err != nil {
			r.what = "register OOM notification"
		}
	}
}

// installRegistered takes in every finished registration.
func (g *Guard) installRegistered() {
	for {
		select {
		case r := <-g.registered:
			g.install(r)
		default:
			return
		}
	}
}

func (g *Guard) install(r *registration) {
	c := r.c
	c.registering = false
	g.inFlight--
	defer g.logStarted()
	if g.known[c.rel] != c || c.limit == cgroup.Unlimited {
		r.close() // forgotten, or its limit lifted, meanwhile
		return
	}
	if r.err != nil {
		r.close()
		g.warnUnlessGone(c, r.what, r.err)
		return
	}
	var ok bool
	if r.full && !c.guarded() {
		ok = g.installGuard(c, r)
	} else {
		if r.oomw != nil {
			r.oomw.Close()
		}
		ok = g.installRearm(c, r)
	}
	if ok && c.limit != r.limit {
		g.register(c) // the limit moved while this one was made
	}
}

// installGuard starts guarding c with r's watches.
func (g *Guard) installGuard(c *cg, r *registration) bool {
	files, err := g.mem.Handle(c.rel)
	if err != nil {
		r.close()
		g.warnUnlessGone(c, "open", err)
		return false
	}
	if !g.watchFd(c, r.thw) || !g.watchFd(c, r.earlyw) || !g.watchFd(c, r.oomw) {
		files.Close()
		g.closeWatch(r.thw)
		g.closeWatch(r.earlyw)
		g.closeWatch(r.oomw)
		return false
	}
	c.thw, c.earlyw, c.oomw, c.files = r.thw, r.earlyw, r.oomw, files
	c.threshold, c.early, c.armedLimit = r.threshold, r.early, r.limit
	g.guarded++
	g.metrics.SetGuarded(g.guarded)
	g.setSoftLimit(c)
	klog.V(3).Infof("guard %s: limit %s, threshold %s", c.rel, bytesMiB(r.limit), bytesMiB(r.threshold))
	// The kernel signals crossings only: a cgroup already above its new
	// threshold would never be noticed, so look at it now.
	c.recheckAt = time.Now()
	return true
}

// installRearm moves c's thresholds: the new watches are in the epoll set
// before the old ones go, so no crossing falls between.
func (g *Guard) installRearm(c *cg, r *registration) bool {
	if !g.watchFd(c, r.thw) || !g.watchFd(c, r.earlyw) {
		g.closeWatch(r.thw)
		g.closeWatch(r.earlyw)
		return false
	}
	g.closeWatch(c.thw)
	g.closeWatch(c.earlyw)
	g.dropPrep(c)
	c.thw, c.earlyw, c.threshold, c.early, c.armedLimit = r.thw, r.earlyw, r.threshold, r.early, r.limit
	g.setSoftLimit(c)
	klog.V(2).Infof("cgroup %s: limit now %s, threshold moved to %s", c.rel, bytesMiB(r.limit), bytesMiB(r.threshold))
	c.recheckAt = time.Now()
	return true
}

// logStarted says, once, when the cgroups found at the start are guarded.
func (g *Guard) logStarted() {
	if g.started.IsZero() || g.inFlight > 0 {
		return
	}
	klog.Infof("guarding %d of %d cgroups under %s (%s, policy %s), ready %v after start",
		g.guarded, len(g.known), g.mem.FS().Root, g.mem.Version(), g.cfg.Policy, time.Since(g.started).Round(time.Millisecond))
	g.started = time.Time{}
	close(g.ready)
}

// Ready is closed once every cgroup found at the start is guarded.
func (g *Guard) Ready() <-chan struct{} { return g.ready }

// stopRegistrations lets registrations still in the kernel finish, and
// closes what they made: nothing stays registered after Run.
func (g *Guard) stopRegistrations() {
	close(g.quit)
	g.regs.Wait()
	for {
		select {
		case r := <-g.registered:
			r.close()
		default:
			return
		}
	}
}
