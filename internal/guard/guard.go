package guard

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/kill"
	"github.com/oom-guard/oom-guard/internal/notify"
)

// cg is everything the loop knows of one cgroup directory. Every cgroup
// under the root is known (and inotify-watched); only limited ones are guarded.
type cg struct {
	rel   string
	limit uint64 // as last read; cgroup.Unlimited when none

	// Set while guarded.
	threshold  uint64
	early      uint64 // the early-warning threshold (Config.EarlyThreshold)
	armedLimit uint64
	thw, oomw  notify.Watch
	earlyw     notify.Watch
	files      Files     // usage, limit, stat kept open while near the limit (files.go); nil at rest
	prep       *prepared // a kill made ready while above the early threshold

	recheckAt  time.Time // zero: no recheck pending
	lastAction time.Time
	// victim is the process the guard last killed here, while the cgroup
	// cools down (cooldown.go): the cooldown ends once it has exited
	// (victimFd, its pidfd in the epoll set, turns readable; without one,
	// Exited is asked at each look) or usage is below the threshold, and
	// after GuardInterval at the latest.
	victim      kill.Candidate
	victimFd    int
	victimWatch bool      // victimFd is open and in the epoll set
	killUsage   uint64    // usage when the victim was killed
	stuck       int       // looks in a row with nothing to kill (back-off; look.go)
	stuckSince  time.Time // since when
	episode     bool      // above the threshold since the last time it was below
	reclaimed   bool      // reclaim already requested in this episode
	noopShown   bool      // the noop policy already reported this episode
	// killFailShown: a kill that cannot succeed (ENOSYS, EPERM) was
	// logged at error level in this episode.
	killFailShown bool

	// held: the guard set oom_kill_disable (hold.go); holdReleased: the
	// kernel's OOM killer has it back until usage is below the threshold.
	held, holdReleased bool

	softLimit      uint64 // the soft limit before the guard set its own
	softLimitSaved bool
	softLimitSet   uint64 // the guard's own, as the kernel keeps it (whole pages)

	// unread: its limit or kernel OOM count could not be read (EMFILE,
	// ENOMEM); read again with the registrations' back-off (readAgain).
	unread      bool
	reading     bool        // a reading of its files is under way (readings.go)
	readMore    bool        // its limit is to be read again once that reading is done
	registering bool        // a registration of its notifications is under way
	retries     int         // registrations failed in a row (retryLater)
	retryAt     time.Time   // zero: no retry pending
	killingRest atomic.Bool // the rest of its victim's container is being killed, off the loop

	oomKills   uint64    // kernel oom_kill count already reported
	groupKills uint64    // kernel oom_group_kill count already reported (v2, 5.17+)
	oomCheckAt time.Time // zero: no kernel OOM count check pending
	oomChecks  int       // checks done since the kernel's OOM notification
	// oomSeen is the processes listed at the kernel's last OOM
	// notification (pid to start time): without the oom_kill counter
	// (before 4.13) one of them gone is a kill (kernelkill.go).
	oomSeen map[int]uint64
	// seen is the processes last seen in the cgroup's sub-tree while it
	// was near its limit (at the early threshold, at the kernel's OOM
	// notification): when the kernel's kill counter moves, the one that
	// is gone is its victim. No kernel log needed.
	seen map[int]kill.Candidate
	// ours is the processes the guard killed here lately (pid: start
	// time): never the kernel's victim, whatever seen says.
	ours map[int]uint64
}

func (c *cg) guarded() bool { return c.thw != nil }

// Guard is the loop. Create with New, start with Run.
type Guard struct {
	cfg      Config
	kernel   Kernel
	mem      Hierarchy
	notifier Notifier
	killer   Killer
	clock    Clock
	placer   LoopPlacer
	reporter Reporter
	metrics  Metrics
	self     int

	poller  Poller
	sampler notify.Sampler // the notifier's, served by the loop; nil if none
	inotify DirWatcher
	known   map[string]*cg
	byFd    map[int]*cg
	guarded int
	// withFiles is how many cgroups have their Files open (files.go).
	withFiles int
	// preps is the cgroups with a kill prepared; the loop sleeps on the
	// CPU of the one victim, if there is one (affinity.go): placedOn, -1
	// for anywhere.
	preps       map[*cg]struct{}
	placedOn    int
	placeFailed bool

	// Registrations off the loop (register.go).
	registered       chan *registration
	regQueue         regQueue // registrations waiting for a registrar
	registrarsOn     bool     // the registrars run (started at the first registration)
	regs             sync.WaitGroup
	tokens           chan struct{}         // background work's share of the Go processors (processors.go)
	killers          sync.WaitGroup        // container kills off the loop (act.go)
	own              ownKills              // the guard's own recent kills (kernelkill.go)
	groupKills       map[string]*groupKill // kernel group kills counted, not yet reported (kernelkill.go)
	aside            sync.WaitGroup        // every other goroutine Run starts (goAside)
	inotifyFailing   bool                  // the last inotify reset was refused
	scopeUnknown     bool                  // a victim's cgroup could not be told at its kill (said once)
	records          *records              // what the guard wrote into cgroups, for a successor (record.go); nil: none
	selfCgroup       *selfCgroup           // the guard's own cgroup, once asked (hold.go)
	holdRefusedShown bool                  // a refused hold was logged
	inFlight         int                   // registrations started, not yet installed
	readsInFlight    int                   // readings started, not yet taken in (readings.go)
	readsDone        chan *reading
	watchRefs        map[DirWatcher]int      // readings making a watch in each instance
	retired          map[DirWatcher]struct{} // instances a reset replaced, closed once no reading holds them
	baseFds          int                     // fds open at the start (fds.go)
	retrying         map[*cg]struct{}
	// timed holds the cgroups whose recheckAt or oomCheckAt was set
	// (setRecheck, setOOMCheck), for pending to look at those alone: a
	// scan of byFd (two watches a guarded cgroup) took a few hundred
	// microseconds of every turn at 4,000 guarded cgroups, twice.
	timed      map[*cg]struct{}
	pendingBuf []*cg
	started    time.Time // zero once the start is logged
	ready      chan struct{}
	quit       chan struct{}

	// deferring: serveUrgent is serving crossings; deferred is the work
	// their kills put off until all are served (afterCrossings).
	deferring bool
	deferred  []func()
	// yielding: a preparation is serving crossings (yieldToCrossings);
	// wokenMidway: the poller was woken meanwhile.
	yielding, wokenMidway bool

	// What the surveyor (survey.go) and the loop hand each other.
	changes    []change         // queued for the loop (discover.go)
	parents    map[string]int   // known cgroups by parent directory (forgetTree)
	journal    map[string]entry // learnt since the surveyor last asked
	journalAsk chan struct{}
	journals   chan map[string]entry
	walks      chan []change
	walkAsk    chan struct{}
	resetWork  chan struct{}
	resets     chan reset
	resetting  bool // a reset is with the surveyor
	firstWalk  bool // the start's walk is not in yet
	// surveyWarned: a walk's failure was logged; the surveyor's own.
	surveyWarned bool
	reclaims     chan string
	nextReset    time.Time

	alive    atomic.Int64 // unix nanos of the loop's last turn
	busyMax  atomic.Int64 // the longest busy turn, ns (busy.go)
	resetAsk chan struct{}
	done     atomic.Bool
	// Observe, if set, is called in the loop after each action with the
	// time from the kernel's notification to the signal (for benchmarks).
	Observe func(reaction time.Duration)
}

// New makes a guard over mem's hierarchy, on the running kernel. It does
// nothing until Run.
func New(cfg Config, mem cgroup.Memory, n Notifier, k ProcessKiller, r Reporter, m Metrics) (*Guard, error) {
	if l, ok := n.(LaggingThresholds); ok {
		cfg.ThresholdLag = l.ThresholdLag()
	}
	return NewOn(cfg, RealKernel(mem, n, k), r, m)
}

// NewOn makes a guard on the given kernel (RealKernel, or a fake).
func NewOn(cfg Config, kern Kernel, r Reporter, m Metrics) (*Guard, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if m == nil {
		m = NopMetrics{}
	}
	if cfg.Registrars == 0 {
		cfg.Registrars = registrars
	}
	return &Guard{
		cfg: cfg, kernel: kern, mem: kern.Mem, notifier: kern.Notifier, killer: kern.Killer, clock: kern.Clock, placer: kern.Placer, placedOn: -1, preps: map[*cg]struct{}{},
		reporter: r, metrics: m, self: os.Getpid(), quit: make(chan struct{}),
		known: map[string]*cg{}, byFd: map[int]*cg{}, retrying: map[*cg]struct{}{}, timed: map[*cg]struct{}{}, groupKills: map[string]*groupKill{},
		parents: map[string]int{}, journal: map[string]entry{}, journalAsk: make(chan struct{}, 1), journals: make(chan map[string]entry, 1),
		walks: make(chan []change, 1), walkAsk: make(chan struct{}, 1), resetAsk: make(chan struct{}, 1),
		resetWork: make(chan struct{}, 1), resets: make(chan reset, 1),
		readsDone: make(chan *reading, cfg.Registrars), watchRefs: map[DirWatcher]int{}, retired: map[DirWatcher]struct{}{},
		registered: make(chan *registration, cfg.Registrars), regQueue: regQueue{more: make(chan struct{}, 1)}, ready: make(chan struct{}),
		reclaims: make(chan string, 64), tokens: backgroundTokens(runtime.GOMAXPROCS(0)),
	}, nil
}

// Healthy is nil while the loop runs.
func (g *Guard) Healthy() error {
	if g.done.Load() {
		return errors.New("guard loop stopped")
	}
	return nil
}

// Run guards until stop is closed, then lets go of every cgroup (restoring
// soft limits, unregistering every eventfd) and returns.
func (g *Guard) Run(stop <-chan struct{}) error {
	// The loop owns its thread: epoll, eventfd reads and the kill all
	// happen here, without a hand-off between threads on the hot path.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer g.unplaceLoop() // the thread goes back to Go's pool as it came
	defer useRealtime(g.cfg.RealtimePriority)()
	defer g.done.Store(true)
	defer reserveProcessor()()

	var err error
	if g.poller, err = g.kernel.NewPoller(); err != nil {
		return err
	}
	defer g.poller.Close()
	// The walker, the reclaimer and the rest wake the poller: they end
	// before it is closed, so none writes to a closed fd's number.
	defer g.dropResets()
	defer g.aside.Wait()
	if s := g.notifier.Sampler(); s != nil {
		if err := g.poller.Add(s.Fd()); err != nil {
			return err
		}
		g.sampler = s
		defer func() { _ = g.poller.Remove(s.Fd()); g.sampler = nil }()
	}
	if err := g.firstWatcher(); err != nil {
		return err
	}
	if g.cfg.StateFile != "" {
		if g.records, err = openRecords(g.cfg.StateFile); err != nil {
			klog.Warningf("state file %s: %v: soft limits are set without a record, so a guard started after this one dies could not restore the operator's values", g.cfg.StateFile, err)
		}
		defer func() { g.records.close(); g.records = nil }()
	}
	g.sayHold()
	defer g.releaseAll()
	quit := g.quit
	defer g.stopRegistrations()
	// Kills under way finish, and report, before the guard lets go.
	defer g.killers.Wait()

	g.baseFds = countFds()
	g.started = g.clock.Now()
	// The first walk is the surveyor's, like any other, with the first
	// reset (each directory watched before it is listed, so none made
	// meanwhile is missed): the loop turns from the start, and adds what
	// it finds, the limited cgroups first.
	g.firstWalk = true
	g.startReset()

	g.goAside(func() { g.surveyor(quit) })
	g.goAside(func() { g.reclaimer(quit) })
	g.goAside(func() {
		select {
		case <-stop:
			g.poller.Wake()
		case <-quit:
		}
	})

	var notified time.Time
	for {
		now := g.clock.Now()
		g.alive.Store(now.UnixNano())
		timeout := g.nextTimeout(now)
		if !notified.IsZero() {
			g.noteBusy(g.clock.Now().Sub(notified))
		}
		ready, woken, err := g.poller.Wait(timeout)
		notified = g.clock.Now()
		if err != nil {
			return err
		}
		if g.serve(ready, notified) || g.wokenMidway {
			woken, g.wokenMidway = true, false
		}
		if woken {
			select {
			case <-stop:
				klog.Info("stopping: releasing every guarded cgroup")
				return nil
			default:
			}
		}
		g.installRegistered()
		g.takeReads()
		g.takeHandovers()
		g.applyChanges()
		g.runTimers(g.clock.Now())
		g.placeLoop()
	}
}

// serve dispatches one epoll batch, the most urgent first. Under a storm
// (many cgroups crossing at once) every ready threshold crossing is served
// before anything slow, the cgroup nearest its limit first (headroom:
// limit - usage, one read each); then victims' exits and the kernel's OOM
// notifications; then the rest (early thresholds, whose preparation is the
// slow part of a kill, inotify). Between two slow items the loop asks the
// kernel again, without waiting, for crossings that came meanwhile. It
// says whether the poller was woken meanwhile.
func (g *Guard) serve(ready []int, notified time.Time) (woken bool) {
	if len(ready) == 1 {
		g.dispatch(ready[0], notified)
		return false
	}
	urgent, rest := g.triage(ready)
	for {
		g.serveUrgent(urgent, notified)
		if len(rest) == 0 {
			return woken
		}
		fd := rest[0]
		rest = rest[1:]
		g.dispatch(fd, notified)
		if len(rest) == 0 {
			return woken
		}
		more, w, err := g.poller.Wait(0)
		if err != nil {
			return woken
		}
		woken = woken || w
		notified = g.clock.Now()
		urgent, _ = g.triage(more)
	}
}

// serveUrgent serves the ready crossings and the like, in order; what
// their kills leave to do after (afterCrossings) waits until all are
// served. Nothing among them forgets a cgroup, so the work put off finds
// its cgroup's files still open.
func (g *Guard) serveUrgent(urgent []int, notified time.Time) {
	outermost := !g.deferring // a preparation in the batch may serve more (yieldToCrossings)
	g.deferring = true
	for _, fd := range urgent {
		g.dispatch(fd, notified)
	}
	if !outermost {
		return
	}
	g.deferring = false
	for _, f := range g.deferred {
		f()
	}
	clear(g.deferred)
	g.deferred = g.deferred[:0]
}

// afterCrossings runs f once the crossings being served are (at once,
// outside serveUrgent).
func (g *Guard) afterCrossings(f func()) {
	if !g.deferring {
		f()
		return
	}
	g.deferred = append(g.deferred, f)
}

// triage splits ready fds into the urgent, in the order to serve them,
// and the rest.
func (g *Guard) triage(ready []int) (urgent, rest []int) {
	type crossing struct {
		fd       int
		headroom uint64
	}
	var crossings []crossing
	var second []int
	for _, fd := range ready {
		if g.sampler != nil && fd == g.sampler.Fd() {
			urgent = append(urgent, fd)
			continue
		}
		c, ok := g.byFd[fd]
		switch {
		case !ok:
			rest = append(rest, fd)
		case c.thw != nil && fd == c.thw.Fd():
			h := uint64(0)
			if usage, err := g.peekUsage(c); err == nil {
				h = sub(c.armedLimit, usage)
			}
			crossings = append(crossings, crossing{fd, h})
		case c.victimWatch && fd == c.victimFd, c.oomw != nil && fd == c.oomw.Fd():
			second = append(second, fd)
		default:
			rest = append(rest, fd)
		}
	}
	slices.SortStableFunc(crossings, func(a, b crossing) int { return cmp.Compare(a.headroom, b.headroom) })
	for _, x := range crossings {
		urgent = append(urgent, x.fd)
	}
	return append(urgent, second...), rest
}

func (g *Guard) dispatch(fd int, notified time.Time) {
	if g.inotify != nil && fd == g.inotify.Fd() {
		g.onInotify()
		return
	}
	if g.sampler != nil && fd == g.sampler.Fd() {
		// The watches that fired are handled now, timed from this wake-up.
		for _, w := range g.sampler.Sample() {
			g.dispatch(w, notified)
		}
		return
	}
	c, ok := g.byFd[fd]
	if !ok {
		return
	}
	switch {
	case c.victimWatch && fd == c.victimFd:
		g.victimExited(c, notified)
	case c.thw != nil && fd == c.thw.Fd():
		_ = c.thw.Drain()
		// The look reads them all: opened here where the early threshold,
		// crossed in the same turn, has not (an error is the look's to say).
		_, _ = g.filesOf(c)
		if c.earlyw == nil && !g.crossed(c) {
			// The early threshold, on the threshold's watch
			// (SharedThresholds), or the threshold crossed downwards:
			// the look ends the episode, or acts if usage rose since.
			g.look(c, notified)
			g.onEarly(c)
			return
		}
		g.metrics.Crossing()
		g.look(c, notified)
	case c.earlyw != nil && fd == c.earlyw.Fd():
		_ = c.earlyw.Drain()
		g.onEarly(c)
	case c.oomw != nil && fd == c.oomw.Fd():
		_ = c.oomw.Drain()
		if c.held && !c.holdReleased {
			g.metrics.HoldWait()
			g.look(c, notified) // its tasks wait for the guard (hold.go)
		}
		g.onKernelOOM(c, notified)
	}
}

// nextTimeout is the time until the earliest pending recheck, OOM count
// check or inotify reset.
func (g *Guard) nextTimeout(now time.Time) time.Duration {
	if len(g.changes) > 0 {
		return 0 // the next batch, once the crossings are served
	}
	next := g.nextReset
	for _, c := range g.pending() {
		for _, t := range []time.Time{c.recheckAt, c.oomCheckAt} {
			if !t.IsZero() && t.Before(next) {
				next = t
			}
		}
	}
	for c := range g.retrying {
		if !c.retryAt.IsZero() && c.retryAt.Before(next) {
			next = c.retryAt
		}
	}
	if t := g.placedUntil(); !t.IsZero() && t.Before(next) {
		next = t
	}
	return max(next.Sub(now), 0)
}

// pending lists the cgroups with a timer set. Few are: only those above
// their threshold or just after a kernel OOM.
// pending lists the watched cgroups with a recheck or an OOM-count check
// due. The slice is reused: it holds until the next call.
func (g *Guard) pending() []*cg {
	out := g.pendingBuf[:0]
	for c := range g.timed {
		switch {
		case c.recheckAt.IsZero() && c.oomCheckAt.IsZero():
			delete(g.timed, c)
		case g.watched(c):
			out = append(out, c)
		}
	}
	g.pendingBuf = out
	return out
}

// watched says whether the loop has any of c's watches in its epoll set.
func (g *Guard) watched(c *cg) bool {
	return c.thw != nil || c.earlyw != nil || c.oomw != nil || c.victimWatch
}

// setRecheck has c looked at again at t.
func (g *Guard) setRecheck(c *cg, t time.Time) {
	c.recheckAt = t
	g.timed[c] = struct{}{}
}

// setOOMCheck has c's OOM kill count read again at t.
func (g *Guard) setOOMCheck(c *cg, t time.Time) {
	c.oomCheckAt = t
	g.timed[c] = struct{}{}
}

func (g *Guard) runTimers(now time.Time) {
	for _, c := range g.pending() {
		if !c.recheckAt.IsZero() && !now.Before(c.recheckAt) {
			c.recheckAt = time.Time{}
			g.look(c, now)
		}
		if !c.oomCheckAt.IsZero() && !now.Before(c.oomCheckAt) {
			c.oomCheckAt = time.Time{}
			g.countKernelKills(c)
		}
	}
	g.retryDue(now)
	if !now.Before(g.nextReset) {
		g.startReset()
	}
}

// firstWatcher makes the inotify instance the guard starts with.
func (g *Guard) firstWatcher() error {
	in, err := g.kernel.NewWatcher()
	if err != nil {
		return err
	}
	if err := g.poller.Add(in.Fd()); err != nil {
		in.Close()
		return err
	}
	g.inotify = in
	g.nextReset = g.clock.Now().Add(g.cfg.InotifyReset)
	return nil
}

// startReset asks the surveyor to re-create every inotify watch from
// scratch in a new instance, and to walk the hierarchy to catch whatever
// happened between the old watches and the new (survey.go). The old
// instance stays in use until the new one is handed over whole.
func (g *Guard) startReset() {
	g.nextReset = g.clock.Now().Add(g.cfg.InotifyReset)
	if g.resetting {
		return
	}
	select {
	case g.resetWork <- struct{}{}:
		g.resetting = true
	default:
	}
}

// takeHandovers takes what the surveyor has handed over: a new inotify
// instance first, so that the journal it asks for next is of what the
// loop knew once the old instance was read to its end.
func (g *Guard) takeHandovers() {
	select {
	case r := <-g.resets:
		g.resetting = false
		g.installReset(r)
	default:
	}
	select {
	case <-g.journalAsk:
		g.handJournal()
	default:
	}
	select {
	case diff := <-g.walks:
		if g.firstWalk {
			klog.V(2).Infof("found %d cgroups under %s in %v; registering the limited ones", len(diff), g.mem.FS().Root, g.clock.Now().Sub(g.started).Round(time.Microsecond))
			g.firstWalk = false
		}
		g.queue(diff...)
		g.logStarted()
	default:
	}
	select {
	case <-g.resetAsk:
		g.startReset()
	default:
	}
}

// installReset puts a new inotify instance in the old one's place. Where
// the kernel refused one (EMFILE, fs.inotify.max_user_instances or
// max_user_watches reached, common on busy nodes), the old one stays in use
// and the reset is tried again a little later.
func (g *Guard) installReset(r reset) {
	err := r.err
	if err == nil {
		if err = g.poller.Add(r.in.Fd()); err != nil {
			g.goAside(func() { r.in.Close() })
		}
	}
	if err != nil {
		g.metrics.Fault(FaultInotifyReset)
		retry := min(inotifyRetry, g.cfg.InotifyReset)
		if !g.inotifyFailing {
			klog.Warningf("inotify reset: %v: the current watches stay in use; trying again every %v", err, retry)
			g.inotifyFailing = true
		}
		g.nextReset = g.clock.Now().Add(retry)
		return
	}
	if g.inotifyFailing {
		klog.Info("inotify reset: done again")
		g.inotifyFailing = false
	}
	old := g.inotify
	g.onInotify() // what the old instance still holds
	_ = g.poller.Remove(old.Fd())
	g.inotify = r.in
	g.retireWatcher(old)
	g.nextReset = g.clock.Now().Add(g.cfg.InotifyReset)
}

// dropResets closes an instance handed over as the guard stopped.
func (g *Guard) dropResets() {
	select {
	case r := <-g.resets:
		closeWatcher(r.in)
	default:
	}
}

// inotifyRetry is how soon a refused inotify reset is tried again.
const inotifyRetry = 10 * time.Second

// goAside runs f on a goroutine of its own that Run waits for before it
// returns.
func (g *Guard) goAside(f func()) {
	g.aside.Add(1)
	go func() {
		defer g.aside.Done()
		f()
	}()
}

// releaseAll lets go of every cgroup: soft limits restored, eventfds closed.
func (g *Guard) releaseAll() {
	for _, c := range g.known {
		g.unguard(c)
	}
	if g.inotify != nil {
		_ = g.poller.Remove(g.inotify.Fd())
		g.inotify.Close()
	}
	g.closeRetired()
	g.metrics.SetGuarded(0)
}

func (g *Guard) absPath(rel string) string { return g.mem.FS().Path(rel, "") }

func bytesMiB(b uint64) string { return fmt.Sprintf("%.1fMiB", float64(b)/(1<<20)) }
