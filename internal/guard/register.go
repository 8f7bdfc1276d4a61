package guard

import (
	"slices"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/notify"
)

// Registering a v1 usage threshold costs the kernel a synchronize_rcu():
// 8 to 44 ms measured on this project's machines, two thresholds a cgroup.
// A loop that waited for them would be deaf to every other cgroup for that
// long (20 s at the start with 1,000 cgroups), so registrations run off the
// loop, several at once, and the loop installs the finished watches. Until
// then a cgroup keeps whatever it had: nothing when new, its old thresholds
// when re-armed. Grace periods waited for at once overlap, so the start
// scales with the registrations at once (bench/preempt -startup, 2 CPUs,
// load 16-22): 1,000 cgroups guarded in 2.2 s with 16, 1.3 s with 32,
// 0.6 s with 64, 0.4 s with 128; 3,000 in 7.2, 3.5, 1.9 and 1.2 s. Each
// registration under way holds an OS thread in the kernel: 64 is 5,000
// cgroups in about 3 s for 64 threads.
const registrars = 64

// registration is the notifications of one cgroup, made for one limit.
// Its watches are nil until made: close undoes what a registration that
// failed half way did make, and only that.
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
	if !c.guarded() {
		if err := g.fdsShort(); err != nil {
			g.retryLater(c, "register", err)
			return
		}
	}
	c.registering = true
	g.inFlight++
	r := &registration{c: c, limit: c.limit, threshold: g.cfg.Threshold(c.limit), early: g.cfg.EarlyThreshold(c.limit), full: !c.guarded()}
	g.startRegistrars()
	g.regQueue.push(work{r: r})
}

// startRegistrars starts the registrars, at the first work for them.
func (g *Guard) startRegistrars() {
	if g.registrarsOn {
		return
	}
	g.registrarsOn = true
	for i := 0; i < g.cfg.Registrars; i++ {
		g.regs.Add(1)
		go func() {
			defer g.regs.Done()
			g.registrar()
		}()
	}
}

// work is one registration or one reading (readings.go).
type work struct {
	r  *registration
	rd *reading
}

// regQueue is the registrations and readings waiting for a registrar. A goroutine for
// each, waiting its turn, would cost its stack meanwhile: thousands of
// them at a start or in a burst of new cgroups (measured: the guard over
// 5,000 cgroups in a 60 MiB cgroup was OOM-killed by a burst of 1,000).
// The loop only appends under the lock, a registrar only takes.
type regQueue struct {
	mu sync.Mutex
	// The registrations go first: a reading is a few system calls, a
	// registration a grace period, and with ten thousand readings
	// queued at the start the limited cgroups' registrations, queued as
	// their readings are taken in, would wait for all of them.
	waiting, readings []work
	more              chan struct{} // holds a token once something was queued
}

func (q *regQueue) push(w work) {
	q.mu.Lock()
	if w.rd != nil {
		q.readings = append(q.readings, w)
	} else {
		q.waiting = append(q.waiting, w)
	}
	q.mu.Unlock()
	select {
	case q.more <- struct{}{}:
	default:
	}
}

// pop takes the oldest registration waiting, else the oldest reading;
// false if none.
func (q *regQueue) pop() (work, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if w, ok := popFirst(&q.waiting); ok {
		return w, true
	}
	return popFirst(&q.readings)
}

func popFirst(ws *[]work) (work, bool) {
	if len(*ws) == 0 {
		return work{}, false
	}
	w := (*ws)[0]
	(*ws)[0] = work{}
	*ws = (*ws)[1:]
	if len(*ws) == 0 {
		*ws = nil // the array a burst grew goes
	}
	return w, true
}

// registrar makes the registrations and readings queued, one at a time,
// until quit. It takes from the queue before it waits, so a token taken
// by another never leaves one behind.
func (g *Guard) registrar() {
	for {
		w, ok := g.regQueue.pop()
		if !ok {
			select {
			case <-g.regQueue.more:
				continue
			case <-g.quit:
				return
			}
		}
		select {
		case <-g.quit:
			return // not made: nothing to close
		default:
		}
		if w.rd != nil {
			g.inBackground(func() { g.read(w.rd) }) // holds no fd after
			select {
			case g.readsDone <- w.rd:
				g.poller.Wake()
			case <-g.quit:
				return
			}
			continue
		}
		r := w.r
		g.makeWatches(r)
		select {
		case g.registered <- r:
			g.poller.Wake()
		case <-g.quit:
			r.close()
			return
		}
	}
}

// makeWatches runs off the loop: the notifier only.
func (g *Guard) makeWatches(r *registration) {
	if r.thw, r.earlyw, r.what, r.err = g.thresholdWatches(r.c.rel, r.threshold, r.early); r.err != nil {
		return
	}
	if r.full {
		if r.oomw, r.err = g.notifier.OOM(r.c.rel); r.err != nil {
			r.what = "register OOM notification"
			return
		}
	}
}

// thresholdWatches registers rel's threshold and early threshold: on one
// watch where the notifier shares one (SharedThresholds; earlyw is nil
// then, and dispatch tells the two apart), else one each. what names the
// step that failed.
func (g *Guard) thresholdWatches(rel string, threshold, early uint64) (thw, earlyw notify.Watch, what string, err error) {
	if shared, ok := g.notifier.(SharedThresholds); ok {
		thw, err = shared.Thresholds(rel, threshold, early)
		return thw, nil, "register thresholds", err
	}
	if thw, err = g.notifier.Threshold(rel, threshold); err != nil {
		return nil, nil, "register threshold", err
	}
	if earlyw, err = g.notifier.Threshold(rel, early); err != nil {
		return thw, nil, "register early threshold", err
	}
	return thw, earlyw, "", nil
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
		g.retryLater(c, r.what, r.err)
		return
	}
	var ok bool
	if r.full && !c.guarded() {
		ok = g.installGuard(c, r)
	} else {
		// A re-arm keeps c's own; nil, so that a failed re-arm's close
		// does not close them twice (by then perhaps another file's fd).
		if r.oomw != nil {
			r.oomw.Close()
			r.oomw = nil
		}
		ok = g.installRearm(c, r)
	}
	if ok && c.limit != r.limit {
		g.register(c) // the limit moved while this one was made
	}
}

// installGuard starts guarding c with r's watches.
func (g *Guard) installGuard(c *cg, r *registration) bool {
	if err := g.watchFds(c, r.thw, r.earlyw, r.oomw); err != nil {
		r.close()
		g.retryLater(c, "watch", err)
		return false
	}
	c.thw, c.earlyw, c.oomw = r.thw, r.earlyw, r.oomw
	c.threshold, c.early, c.armedLimit = r.threshold, r.early, r.limit
	g.guarded++
	g.metrics.SetGuarded(g.guarded)
	g.endRetries(c)
	g.setSoftLimit(c)
	g.hold(c)
	klog.V(3).Infof("guard %s: limit %s, threshold %s", c.rel, bytesMiB(r.limit), bytesMiB(r.threshold))
	g.sayOddLimit(c, r)
	// The kernel signals crossings only: a cgroup already above its new
	// threshold would never be noticed, so look at it now.
	g.setRecheck(c, g.clock.Now())
	return true
}

// installRearm moves c's thresholds: the new watches are in the epoll set
// before the old ones go, so no crossing falls between.
func (g *Guard) installRearm(c *cg, r *registration) bool {
	if err := g.watchFds(c, r.thw, r.earlyw); err != nil {
		r.close()
		g.retryLater(c, "watch", err)
		return false
	}
	g.endRetries(c)
	g.closeWatch(c.thw)
	g.closeWatch(c.earlyw)
	g.dropPrep(c)
	c.thw, c.earlyw, c.threshold, c.early, c.armedLimit = r.thw, r.earlyw, r.threshold, r.early, r.limit
	g.setSoftLimit(c)
	klog.V(2).Infof("cgroup %s: limit now %s, threshold moved to %s", c.rel, bytesMiB(r.limit), bytesMiB(r.threshold))
	g.sayOddLimit(c, r)
	g.setRecheck(c, g.clock.Now())
	return true
}

// sayOddLimit gives a limit too small for the minimum margin one line:
// its threshold is half the limit, not limit - margin.
func (g *Guard) sayOddLimit(c *cg, r *registration) {
	if floor := g.cfg.MinMargin + g.cfg.ThresholdLag; r.limit-r.threshold < floor {
		klog.Infof("cgroup %s: limit %s is below twice the smallest margin (%s: --min-margin %s, plus %s the kernel may notify late): threshold at half the limit, %s; early threshold %s",
			c.rel, bytesMiB(r.limit), bytesMiB(floor), bytesMiB(g.cfg.MinMargin), bytesMiB(g.cfg.ThresholdLag), bytesMiB(r.threshold), bytesMiB(r.early))
	}
}

// logStarted says, once, when the cgroups found at the start are guarded.
func (g *Guard) logStarted() {
	if g.started.IsZero() || g.firstWalk || g.inFlight > 0 || g.readsInFlight > 0 || len(g.changes) > 0 {
		return
	}
	klog.Infof("guarding %d of %d cgroups under %s (%s, policy %s), ready %v after start",
		g.guarded, len(g.known), g.mem.FS().Root, g.mem.Version(), g.cfg.Policy, g.clock.Now().Sub(g.started).Round(time.Millisecond))
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
		case <-g.readsDone: // holds no fd; its watches go with their instance
		default:
			return
		}
	}
}

// A registration the kernel refused for want of a resource (EMFILE,
// ENOMEM, ENOSPC from epoll's max_user_watches) is tried again, after a
// back-off that doubles up to retryMax: the cgroup stays known, and is
// guarded as soon as the resource is there again.
const (
	retryMin = 100 * time.Millisecond
	retryMax = 10 * time.Second
)

// retryLater schedules c's registration again, unless c is gone. The
// first failure of a streak is logged; the rest are only counted.
func (g *Guard) retryLater(c *cg, what string, err error) {
	if cgroup.IsNotExist(err) || !g.mem.FS().Exists(c.rel) {
		g.forget(c)
		return
	}
	g.metrics.Fault(FaultRegistration)
	switch {
	case c.retries > 0:
	case len(g.retrying) == 0:
		// Said once while any cgroup waits: out of fds, thousands would.
		klog.Warningf("cgroup %s: not guarded: %s: %v (retrying with back-off; oomguard_unguarded_cgroups counts the cgroups waiting, which are logged again only once all are guarded)", c.rel, what, err)
	default:
		klog.V(2).Infof("cgroup %s: not guarded: %s: %v (retrying with back-off)", c.rel, what, err)
	}
	c.retryAt = g.clock.Now().Add(min(retryMin<<min(c.retries, 16), retryMax))
	c.retries++
	g.retrying[c] = struct{}{}
	g.metrics.SetUnguarded(len(g.retrying))
}

// endRetries ends c's retry streak, if it had one.
func (g *Guard) endRetries(c *cg) {
	if c.retries > 0 {
		klog.V(2).Infof("cgroup %s: guarded after %d failed registrations", c.rel, c.retries)
	}
	g.dropRetry(c)
}

// retryDue registers again the cgroups whose back-off has passed.
func (g *Guard) retryDue(now time.Time) {
	for c := range g.retrying {
		if !c.retryAt.IsZero() && !now.Before(c.retryAt) {
			c.retryAt = time.Time{}
			if c.unread {
				g.readAgain(c)
				continue
			}
			if c.limit == cgroup.Unlimited {
				g.dropRetry(c)
				continue
			}
			g.register(c)
		}
	}
}

// dropRetry ends c's retry streak: c is guarded, gone, or needs no guard.
func (g *Guard) dropRetry(c *cg) {
	if _, ok := g.retrying[c]; !ok {
		return
	}
	c.retries, c.retryAt = 0, time.Time{}
	delete(g.retrying, c)
	g.metrics.SetUnguarded(len(g.retrying))
	if len(g.retrying) == 0 {
		klog.Infof("no limited cgroup waits for its registration any more: %d guarded", g.guarded)
	}
}

func (g *Guard) unguard(c *cg) {
	if !c.guarded() {
		return
	}
	// What c counted of a group kill is reported before what names its
	// victims goes (its cgroup removed: its processes are gone with it).
	g.reportGroupKills(c, true)
	g.closeWatch(c.thw)
	g.closeWatch(c.earlyw)
	g.closeWatch(c.oomw)
	g.dropPrep(c)
	g.endCooldown(c)
	g.closeFiles(c)
	c.thw, c.earlyw, c.oomw = nil, nil, nil
	c.recheckAt, c.oomCheckAt, c.seen = time.Time{}, time.Time{}, nil
	g.guarded--
	g.metrics.SetGuarded(g.guarded)
	g.restoreSoftLimit(c)
	g.unhold(c)
}

// watchFds adds ws to the epoll set, all or none; a nil one is none.
func (g *Guard) watchFds(c *cg, ws ...notify.Watch) error {
	ws = slices.DeleteFunc(ws, func(w notify.Watch) bool { return w == nil })
	for i, w := range ws {
		if err := g.poller.Add(w.Fd()); err != nil {
			for _, added := range ws[:i] {
				_ = g.poller.Remove(added.Fd())
				delete(g.byFd, added.Fd())
			}
			return err
		}
		g.byFd[w.Fd()] = c
	}
	return nil
}

// closeWatch takes a watch out of the epoll set before closing it: only
// the loop thread waits on it, so nothing is closed under a waiter.
func (g *Guard) closeWatch(w notify.Watch) {
	if w == nil {
		return
	}
	_ = g.poller.Remove(w.Fd())
	delete(g.byFd, w.Fd())
	w.Close()
}

func (g *Guard) warnUnlessGone(c *cg, what string, err error) {
	if cgroup.IsNotExist(err) {
		g.forget(c)
		return
	}
	klog.Warningf("cgroup %s: %s: %v", c.rel, what, err)
}
