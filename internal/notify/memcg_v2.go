package notify

import (
	"bytes"
	"container/heap"
	"errors"
	"fmt"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/cgroup"
)

// cgroup v2 has no usage-threshold notification: the kernel tells only
// that usage reached memory.high or memory.max ("high" and "max" in
// memory.events), by which time a fast allocator is a few reclaim rounds
// from the OOM killer. Measured in the VM (bench/preempt), reacting to
// "max" alone pre-empts about 60% of fast allocators, and a PSI trigger on
// memory.pressure never fired before the kernel's kill: a cgroup stalls
// only once it is at its limit, and PSI reports a stall a scheduler tick
// or more after it began.
//
// So the V2Notifier samples memory.current, as seldom as it safely can:
// each cgroup is sampled again before it could reach its nearest watched
// level at the fastest rate it is assumed able to grow (the larger of
// GrowthFloor and twice the growth last seen), never more often than
// MinInterval nor less often than MaxInterval. An idle cgroup far below its
// limit is sampled a few times a second; one whose usage climbs towards
// its threshold is sampled ever more often as it nears it. The kernel's own
// events remain as triggers for an immediate sample: "max" (and "high",
// where the guard's tripwire or --openSoftLimit puts memory.high at the
// threshold, where it marks the crossing exactly and holds the allocator
// in reclaim until the guard acts), and a PSI trigger where enabled.
//
// All of it is one epoll set (the Sampler's fd) in the guard's loop: one
// timerfd set to the earliest due sample, and each cgroup's
// memory.events.local (and PSI trigger) polled for POLLPRI. A kernfs file
// wakes a poller synchronously when it changes; inotify on it would be told
// from a work queue, later. Watches themselves are eventfds the sampler
// hands to the loop when their level is crossed, which the loop then treats
// exactly as it treats v1's threshold eventfds.

// V2Options choose and tune the sources of a V2Notifier.
type V2Options struct {
	// Poll samples memory.current on the adaptive schedule above.
	Poll bool
	// Events samples a cgroup as soon as its memory.events.local says it
	// hit memory.high or memory.max.
	Events bool
	// PSI samples a cgroup as soon as a trigger on its memory.pressure
	// fires (PSIStall of "some" stall within PSIWindow). Kernels booted
	// with psi=0 refuse triggers: the notifier then goes on without.
	PSI                 bool
	PSIStall, PSIWindow time.Duration
	// GrowthFloor (bytes per second) is the slowest a cgroup is assumed
	// able to grow; 0 measures it: twice the rate at which one thread of
	// this machine makes fresh memory resident (MeasureFaultRate), so that
	// a single-threaded allocator from a standing start is sampled before
	// it can cross. Faster growth is seen in the samples and assumed
	// twice over from then on.
	GrowthFloor float64
	// MinInterval and MaxInterval bound the time between two samples of
	// a cgroup below a watched level; AboveInterval is the time between
	// two samples of one above all its levels (to see it go back below).
	MinInterval, MaxInterval, AboveInterval time.Duration
}

// DefaultV2Options poll and react to memory.events; no PSI.
func DefaultV2Options() V2Options {
	return V2Options{
		Poll: true, Events: true,
		PSIStall: 10 * time.Millisecond, PSIWindow: 500 * time.Millisecond,
		MinInterval: 250 * time.Microsecond, MaxInterval: time.Second, AboveInterval: 10 * time.Millisecond,
	}
}

// Sampler is a notifier's own work in the guard's loop: Fd joins the
// loop's epoll set, and when it is readable the loop calls Sample, which
// returns the fds of the watches that fired: the caller handles them as it
// would a readable watch (they are not made readable themselves).
type Sampler interface {
	Fd() int
	Sample() []int
}

// V2Notifier registers cgroup v2 notifications under one hierarchy (see
// the top of this file). Make it with NewV2Notifier; Close it only after
// the loop that serves its Sampler has stopped.
type V2Notifier struct {
	fs    *cgroup.FS
	opts  V2Options
	floor float64

	// mu guards what follows. The loop's Sample holds it across its reads
	// of memory.current; every other holder (the registrations, on
	// normal-priority goroutines) holds it for bookkeeping only, never
	// across a system call: the real-time loop must never wait for a
	// thread the scheduler may hold off its CPU.
	mu       sync.Mutex
	ep       int // the Sampler's epoll set
	timer    int // timerfd, CLOCK_MONOTONIC, absolute; armed by the loop only
	kick     int // eventfd in ep: a registration's new schedule for the loop to arm
	armedFor time.Duration
	probes   map[string]*probe
	bySource map[int]*probe // memory.events.local or PSI fd -> its probe
	queue    probeQueue
	ready    []unix.EpollEvent
	buf      []byte
	fired    []int
	psiOff   error // why PSI triggers are not used, once refused
	closed   bool
	samples  atomic.Uint64
}

// probe is one cgroup's sampling state, shared by its watches.
type probe struct {
	rel     string
	current *os.File // memory.current
	events  *os.File // memory.events.local (memory.events before 5.2)
	psi     *os.File // a PSI trigger on memory.pressure; nil without
	levels  []*LevelWatch
	ooms    []*OOMWatch
	refs    int

	usage     uint64
	sampledAt time.Duration // monotonic; 0: never
	rate      float64       // bytes/s, the recent growth, decaying
	counts    eventCounts
	dead      bool  // a file read failed (the cgroup is gone): no more sampling
	psiOff    error // why openProbe got no PSI trigger, if the kernel refuses them

	due, earliest time.Duration // monotonic; the next sample may come a quarter early to share a wake-up
	index         int           // in the queue; -1 when not in it
}

type eventCounts struct{ high, max, oom, oomKill uint64 }

// NewV2Notifier makes a notifier for the v2 hierarchy fs.
func NewV2Notifier(fs *cgroup.FS, opts V2Options) (*V2Notifier, error) {
	if opts.MinInterval <= 0 || opts.MaxInterval < opts.MinInterval || opts.AboveInterval <= 0 {
		return nil, fmt.Errorf("v2 notifier: intervals must be positive and min <= max (got %v, %v, %v)", opts.MinInterval, opts.MaxInterval, opts.AboveInterval)
	}
	floor := opts.GrowthFloor
	if floor <= 0 {
		floor = 2 * MeasureFaultRate()
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	timer, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC|unix.TFD_NONBLOCK)
	if err != nil {
		unix.Close(ep)
		return nil, fmt.Errorf("timerfd_create: %w", err)
	}
	kick, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(timer)
		unix.Close(ep)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	for _, fd := range []int{timer, kick} {
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			unix.Close(kick)
			unix.Close(timer)
			unix.Close(ep)
			return nil, fmt.Errorf("epoll add timerfd or eventfd: %w", err)
		}
	}
	return &V2Notifier{
		fs: fs, opts: opts, floor: floor, ep: ep, timer: timer, kick: kick,
		probes: map[string]*probe{}, bySource: map[int]*probe{},
		ready: make([]unix.EpollEvent, 64), buf: make([]byte, 0, 4096),
	}, nil
}

// Samples counts the reads of memory.current so far (for the benchmark's
// idle cost).
func (n *V2Notifier) Samples() uint64 { return n.samples.Load() }

// GrowthFloor is the growth rate (bytes/s) the notifier assumes at least.
func (n *V2Notifier) GrowthFloor() float64 { return n.floor }

// Sampler is the notifier itself: its epoll set must be served by the loop.
func (n *V2Notifier) Sampler() Sampler { return n }

// Fd is the sampler's epoll set: readable when a sample is due or a
// cgroup's memory.events.local or PSI trigger has news.
func (n *V2Notifier) Fd() int { return n.ep }

// Close releases the sampler. Every watch should be closed first; the loop
// that served the Sampler must have stopped.
func (n *V2Notifier) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	for _, p := range n.probes {
		n.closeFiles(n.forgetProbe(p))
	}
	unix.Close(n.kick)
	unix.Close(n.timer)
	return unix.Close(n.ep)
}

// Threshold fires when rel's usage is sampled on the other side of bytes
// than it was last, either way.
func (n *V2Notifier) Threshold(rel string, bytes uint64) (Watch, error) {
	efd, err := newEventfd(n.fs.Path(rel, "memory.current"))
	if err != nil {
		return nil, err
	}
	p, err := n.acquire(rel)
	if err != nil {
		efd.Close()
		return nil, err
	}
	n.mu.Lock()
	// A watch reports crossings from now on, as v1's threshold eventfd
	// does; a cgroup already above is the guard's to look at.
	w := &LevelWatch{Eventfd: efd, n: n, p: p, level: bytes, above: p.usage >= bytes}
	p.levels = append(p.levels, w)
	n.schedule(p, mono())
	n.mu.Unlock()
	n.kickLoop()
	return w, nil
}

// kickLoop has the loop's next Sample arm the timer for a new schedule.
func (n *V2Notifier) kickLoop() {
	one := [8]byte{1}
	_, _ = unix.Write(n.kick, one[:])
}

// OOM fires when the kernel finds rel out of memory: its own "oom" count
// in memory.events.local went up (its limit was hit, whether or not the
// kernel found a process to kill), or its own "oom_kill" did (the kernel
// killed in it, for its limit or an ancestor's).
func (n *V2Notifier) OOM(rel string) (Watch, error) {
	efd, err := newEventfd(n.fs.Path(rel, "memory.events.local"))
	if err != nil {
		return nil, err
	}
	p, err := n.acquire(rel)
	if err != nil {
		efd.Close()
		return nil, err
	}
	w := &OOMWatch{Eventfd: efd, n: n, p: p}
	n.mu.Lock()
	p.ooms = append(p.ooms, w)
	n.mu.Unlock()
	return w, nil
}

// LevelWatch is a v2 threshold: readable when the sampler saw usage cross
// its level.
type LevelWatch struct {
	*Eventfd
	n     *V2Notifier
	p     *probe
	level uint64
	above bool
}

// Drain has nothing to do: the sampler hands a fired watch to the loop
// rather than writing its eventfd.
func (w *LevelWatch) Drain() error { return nil }

// Close detaches the watch from its cgroup's probe and closes its eventfd.
func (w *LevelWatch) Close() error {
	w.n.mu.Lock()
	w.p.levels = remove(w.p.levels, w)
	last := w.n.release(w.p)
	w.n.mu.Unlock()
	w.n.closeFiles(last)
	return w.Eventfd.Close()
}

// OOMWatch is readable when the cgroup's own OOM count went up.
type OOMWatch struct {
	*Eventfd
	n *V2Notifier
	p *probe
}

// Drain has nothing to do (see LevelWatch.Drain).
func (w *OOMWatch) Drain() error { return nil }

// Close detaches the watch from its cgroup's probe and closes its eventfd.
func (w *OOMWatch) Close() error {
	w.n.mu.Lock()
	w.p.ooms = remove(w.p.ooms, w)
	last := w.n.release(w.p)
	w.n.mu.Unlock()
	w.n.closeFiles(last)
	return w.Eventfd.Close()
}

func remove[T comparable](s []T, x T) []T {
	for i, v := range s {
		if v == x {
			return append(s[:i], s[i+1:]...)
		}
	}
	return s
}

func newEventfd(what string) (*Eventfd, error) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd for %s: %w", what, err)
	}
	return &Eventfd{fd: efd}, nil
}

// acquire returns rel's probe, opening and sampling it if it is new. The
// files are opened and read without the lock (see mu): two registrations
// racing for a new cgroup each open one, and the loser closes its own.
func (n *V2Notifier) acquire(rel string) (*probe, error) {
	n.mu.Lock()
	p, err, ok := n.ref(rel)
	n.mu.Unlock()
	if ok {
		return p, err
	}
	fresh, err := n.openProbe(rel)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	p, err, ok = n.ref(rel)
	if !ok {
		n.probes[rel] = fresh
		for _, f := range []*os.File{fresh.events, fresh.psi} {
			if f != nil {
				n.bySource[int(f.Fd())] = fresh
			}
		}
		if n.psiOff == nil {
			n.psiOff = fresh.psiOff
		}
		p = fresh
	}
	n.mu.Unlock()
	if ok {
		n.closeFiles(fresh)
	}
	return p, err
}

// ref takes a reference to rel's probe if there is one (ok).
func (n *V2Notifier) ref(rel string) (p *probe, err error, ok bool) {
	if n.closed {
		return nil, errors.New("v2 notifier closed"), true
	}
	p, ok = n.probes[rel]
	switch {
	case !ok:
		return nil, nil, false
	case p.dead:
		return nil, fmt.Errorf("cgroup %s: %w", n.fs.Path(rel, ""), unix.ENODEV), true
	}
	p.refs++
	return p, nil, true
}

// openProbe opens rel's files, reads them once and adds its event
// sources to the epoll set. It touches nothing shared: it runs unlocked.
// Until the probe is in bySource, the loop passes over its sources.
func (n *V2Notifier) openProbe(rel string) (*probe, error) {
	p := &probe{rel: rel, index: -1, refs: 1}
	var err error
	if p.current, err = n.fs.Open(rel, "memory.current"); err != nil {
		return nil, err
	}
	buf := make([]byte, 0, 512)
	if err = n.openEvents(p, buf); err != nil {
		p.current.Close()
		return nil, err
	}
	n.mu.Lock()
	psiOff := n.psiOff
	n.mu.Unlock()
	if n.opts.PSI && psiOff == nil {
		n.openPSI(p)
	}
	data, err := pread(p.current, buf)
	if err == nil {
		if p.usage, err = cgroup.ParseUint(bytes.NewReader(data)); err != nil {
			err = fmt.Errorf("%s: %w", p.current.Name(), err)
		}
	}
	if err != nil {
		n.closeFiles(p)
		return nil, err
	}
	n.samples.Add(1)
	p.sampledAt = mono()
	return p, nil
}

func (n *V2Notifier) openEvents(p *probe, buf []byte) error {
	f, err := n.fs.Open(p.rel, "memory.events.local")
	if errors.Is(err, os.ErrNotExist) && n.fs.Exists(p.rel) {
		f, err = n.fs.Open(p.rel, "memory.events") // before 5.2: hierarchical
	}
	if err != nil {
		return err
	}
	// Reading it once sets the point after which a change makes it ready.
	if p.counts, err = readEvents(f, buf); err != nil {
		f.Close()
		return err
	}
	fd := int(f.Fd())
	if err := unix.EpollCtl(n.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLPRI, Fd: int32(fd)}); err != nil {
		f.Close()
		return fmt.Errorf("epoll add %s: %w", f.Name(), err)
	}
	p.events = f
	return nil
}

// openPSI adds a PSI trigger for p, if the kernel takes one. It runs
// unlocked (openProbe): a refusal is noted on p for acquire to keep.
func (n *V2Notifier) openPSI(p *probe) {
	f, err := n.fs.OpenFile(p.rel, "memory.pressure", unix.O_RDWR|unix.O_NONBLOCK)
	if err == nil {
		// The kernel overwrites the last byte written with a NUL.
		trigger := fmt.Sprintf("some %d %d\x00", n.opts.PSIStall.Microseconds(), n.opts.PSIWindow.Microseconds())
		if _, err = unix.Write(int(f.Fd()), []byte(trigger)); err != nil {
			err = fmt.Errorf("PSI trigger %q on %s: %w", trigger[:len(trigger)-1], f.Name(), err)
			f.Close()
		}
	}
	if err == nil {
		fd := int(f.Fd())
		if err = unix.EpollCtl(n.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLPRI, Fd: int32(fd)}); err == nil {
			p.psi = f
			return
		}
		f.Close()
	}
	if cgroup.IsNotExist(err) && n.fs.Exists(p.rel) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
		p.psiOff = err // psi=0, or no PSI in this kernel: not asked again
	}
}

// release drops one reference to p. With the last, p leaves every table,
// and its files are returned for the caller to close once it has let go of
// the lock.
func (n *V2Notifier) release(p *probe) (last *probe) {
	p.refs--
	if p.refs > 0 || n.closed {
		return nil
	}
	return n.forgetProbe(p)
}

// forgetProbe takes p out of every table; its files stay open.
func (n *V2Notifier) forgetProbe(p *probe) *probe {
	n.unqueue(p)
	for _, f := range []*os.File{p.events, p.psi} {
		if f != nil && n.bySource[int(f.Fd())] == p {
			delete(n.bySource, int(f.Fd()))
		}
	}
	if n.probes[p.rel] == p {
		delete(n.probes, p.rel)
	}
	return p
}

// closeFiles closes the files of a probe that no table holds any more
// (nil: nothing to do). A timer armed for it fires into an empty Sample.
func (n *V2Notifier) closeFiles(p *probe) {
	if p == nil {
		return
	}
	n.detachSources(p)
	p.current.Close()
}

// detachSources takes p's event sources out of the epoll set and closes
// them: a removed cgroup's file polls as ready for ever.
func (n *V2Notifier) detachSources(p *probe) {
	for _, f := range []*os.File{p.events, p.psi} {
		if f != nil {
			_ = unix.EpollCtl(n.ep, unix.EPOLL_CTL_DEL, int(f.Fd()), nil)
			f.Close()
		}
	}
	p.events, p.psi = nil, nil
}

// Sample does what is due: the samples whose time has come and those the
// kernel's events ask for. It returns the fds of the watches that fired.
func (n *V2Notifier) Sample() []int {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.fired = n.fired[:0]
	if n.closed {
		return nil
	}
	k, err := unix.EpollWait(n.ep, n.ready, 0)
	if err != nil {
		k = 0 // EINTR: the loop comes back
	}
	now := mono()
	for _, ev := range n.ready[:k] {
		fd := int(ev.Fd)
		if fd == n.timer {
			// Expired: rearm below sets it again, which also clears its
			// readiness (timerfd_settime resets the count): no read needed.
			n.armedFor = -1
			continue
		}
		if fd == n.kick {
			var buf [8]byte
			_, _ = unix.Read(n.kick, buf[:])
			continue
		}
		p, ok := n.bySource[fd]
		if !ok {
			continue
		}
		if p.events != nil && fd == int(p.events.Fd()) {
			n.onEvents(p, now)
		} else {
			_ = n.sample(p, now) // PSI
		}
	}
	for len(n.queue) > 0 && n.queue[0].earliest <= now {
		_ = n.sample(n.queue[0], now)
	}
	n.rearm()
	return n.fired
}

// onEvents reads p's memory.events.local after the kernel changed it.
func (n *V2Notifier) onEvents(p *probe, now time.Duration) {
	c, err := readEvents(p.events, n.buf)
	if err != nil {
		n.fail(p)
		return
	}
	old := p.counts
	p.counts = c
	// A kill counts too: the kernel kills after its report, which on a
	// slow console can take longer than the guard looks after the "oom"
	// (a group kill goes on killing while it prints, line by line).
	if c.oom != old.oom || c.oomKill > old.oomKill {
		for _, w := range p.ooms {
			n.fire(w.Eventfd)
		}
	}
	if n.opts.Events && (c.max != old.max || c.high != old.high) {
		_ = n.sample(p, now)
	}
}

func readEvents(f *os.File, buf []byte) (eventCounts, error) {
	data, err := pread(f, buf)
	if err != nil {
		return eventCounts{}, err
	}
	m, err := cgroup.ParseFlatKeyed(bytes.NewReader(data))
	if err != nil {
		return eventCounts{}, fmt.Errorf("%s: %w", f.Name(), err)
	}
	return eventCounts{high: m["high"], max: m["max"], oom: m["oom"], oomKill: m["oom_kill"]}, nil
}

// sample reads p's usage, fires the levels it crossed and schedules the
// next sample. A failed read (the cgroup is gone) fires every watch, so
// that the loop finds out.
func (n *V2Notifier) sample(p *probe, now time.Duration) error {
	n.samples.Add(1)
	data, err := pread(p.current, n.buf)
	var usage uint64
	if err == nil {
		if usage, err = cgroup.ParseUint(bytes.NewReader(data)); err != nil {
			err = fmt.Errorf("%s: %w", p.current.Name(), err)
		}
	}
	if err != nil {
		n.fail(p)
		return err
	}
	if p.sampledAt > 0 && now > p.sampledAt {
		dt := (now - p.sampledAt).Seconds()
		growth := 0.0
		if usage > p.usage {
			growth = float64(usage-p.usage) / dt
		}
		// The growth seen decays with a half-life of a second.
		p.rate = max(growth, p.rate*math.Exp2(-dt))
	}
	p.usage, p.sampledAt = usage, now
	for _, w := range p.levels {
		if above := usage >= w.level; above != w.above {
			w.above = above
			n.fire(w.Eventfd)
		}
	}
	n.schedule(p, now)
	return nil
}

func (n *V2Notifier) fail(p *probe) {
	if p.dead {
		return
	}
	p.dead = true
	n.unqueue(p)
	for _, f := range []*os.File{p.events, p.psi} {
		if f != nil {
			delete(n.bySource, int(f.Fd()))
		}
	}
	n.detachSources(p)
	for _, w := range p.levels {
		n.fire(w.Eventfd)
	}
	for _, w := range p.ooms {
		n.fire(w.Eventfd)
	}
}

// fire hands a watch to the caller of Sample, which handles it at once;
// its eventfd is not written, which would cost the hot path a write and a
// read.
func (n *V2Notifier) fire(e *Eventfd) {
	n.fired = append(n.fired, e.fd)
}

// schedule sets p's next sample (see the top of this file).
func (n *V2Notifier) schedule(p *probe, now time.Duration) {
	if !n.opts.Poll || p.dead || len(p.levels) == 0 {
		n.unqueue(p)
		return
	}
	d := n.Interval(p.usage, p.levels, p.rate)
	p.due, p.earliest = now+d, now+d-d/4
	if p.index < 0 {
		heap.Push(&n.queue, p)
	} else {
		heap.Fix(&n.queue, p.index)
	}
}

// Interval is how long a cgroup at usage, growing at rate bytes/s, may go
// unsampled: until it could reach the nearest level above it.
func (n *V2Notifier) Interval(usage uint64, levels []*LevelWatch, rate float64) time.Duration {
	headroom := uint64(math.MaxUint64)
	for _, w := range levels {
		if usage < w.level {
			headroom = min(headroom, w.level-usage)
		}
	}
	if headroom == math.MaxUint64 {
		return n.opts.AboveInterval
	}
	return n.opts.interval(headroom, max(n.floor, 2*rate))
}

func (o V2Options) interval(headroom uint64, rate float64) time.Duration {
	d := time.Duration(float64(headroom) / rate * float64(time.Second))
	return min(max(d, o.MinInterval), o.MaxInterval)
}

func (n *V2Notifier) unqueue(p *probe) {
	if p.index >= 0 {
		heap.Remove(&n.queue, p.index)
	}
}

// rearm sets the timer to the earliest due sample.
func (n *V2Notifier) rearm() {
	if n.closed {
		return
	}
	var due time.Duration
	if len(n.queue) > 0 {
		due = n.queue[0].due
	}
	if due == n.armedFor {
		return
	}
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(due))}
	if err := unix.TimerfdSettime(n.timer, unix.TFD_TIMER_ABSTIME, &spec, nil); err == nil {
		n.armedFor = due
	}
}

// probeQueue is a min-heap of probes by due time.
type probeQueue []*probe

func (q probeQueue) Len() int           { return len(q) }
func (q probeQueue) Less(i, j int) bool { return q[i].due < q[j].due }
func (q probeQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *probeQueue) Push(x any) {
	p := x.(*probe)
	p.index = len(*q)
	*q = append(*q, p)
}
func (q *probeQueue) Pop() any {
	old := *q
	p := old[len(old)-1]
	old[len(old)-1] = nil
	p.index = -1
	*q = old[:len(old)-1]
	return p
}

// mono is CLOCK_MONOTONIC, the timerfd's clock. Never 0 on a running system.
func mono() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

// pread reads a whole small cgroup file from offset 0 into buf.
func pread(f *os.File, buf []byte) ([]byte, error) {
	buf = buf[:cap(buf)]
	for {
		k, err := unix.Pread(int(f.Fd()), buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", f.Name(), err)
		}
		return buf[:k], nil
	}
}

// MeasureFaultRate is how fast (bytes/s) one thread of this machine makes
// fresh anonymous memory resident, touching one byte a page as a fast
// allocator does: the best of a few 8 MiB runs, each unmapped at once.
func MeasureFaultRate() float64 {
	const chunk = 8 << 20
	page := os.Getpagesize()
	best := 0.0
	for i := 0; i < 4; i++ {
		mem, err := unix.Mmap(-1, 0, chunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			break
		}
		start := time.Now()
		for off := 0; off < chunk; off += page {
			mem[off] = 1
		}
		d := time.Since(start)
		_ = unix.Munmap(mem)
		if d > 0 {
			best = max(best, chunk/d.Seconds())
		}
	}
	if best == 0 {
		return 1 << 30 // no measurement: a GiB a second
	}
	return best
}
