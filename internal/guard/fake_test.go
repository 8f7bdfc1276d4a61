package guard

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/event"
	"github.com/oom-guard/oom-guard/internal/kill"
	"github.com/oom-guard/oom-guard/internal/notify"
	"golang.org/x/sys/unix"
)

// A fake kernel behind the loop's ports, for the state machine's table
// tests: cgroup directories are real (a temporary tree, so that walking
// and naming are the real code's), their files are values the test sets,
// and notifications are fds the test fires by calling dispatch. Every
// behaviour is also shown on the real kernel (guard_test.go, v2_test.go);
// this serves the edge cases a real kernel cannot be made to produce at
// the right moment.
type fakeKernel struct {
	t    *testing.T
	root string
	now  time.Time

	mu       sync.Mutex
	cgroups  map[string]*fakeCgroup
	nextFd   int
	procs    map[int]*fakeProc // by pid
	killed   []int
	acted    []event.Action
	counted  []event.CounterKill
	polled   map[int]bool
	killErrs map[int]error // pid -> what its Kill returns
	ready    []int         // what the poller's next Wait returns
	// gates: a read or watch named "limit:/rel", "oom:/rel" or
	// "watch:/rel" waits until its channel is closed (a system call
	// that waits in the kernel).
	gates map[string]chan struct{}
	// The loop's CPU (LoopPlacer): loopCPU, -1 for anywhere; followErr is
	// what Follow answers.
	loopCPU   int
	followErr error
	// holdErr is what SetOOMKillDisable answers; self is the guard's own
	// cgroup (SelfCgroup), selfErr its error.
	holdErr error
	self    string
	selfErr error
}

// gate makes the kernel's what (as in gates) wait until the returned
// function is called.
func (k *fakeKernel) gate(what string) (open func()) {
	ch := make(chan struct{})
	k.set(func() { k.gates[what] = ch })
	return sync.OnceFunc(func() { close(ch) })
}

// wait waits at what's gate, if it has one.
func (k *fakeKernel) wait(what string) {
	k.mu.Lock()
	ch := k.gates[what]
	k.mu.Unlock()
	if ch != nil {
		<-ch
	}
}

type fakeCgroup struct {
	limit, usage, reclaimable, oomKills uint64
	gone                                bool
	oomGroup                            bool   // memory.oom.group set (as on v2)
	oomKillDisable, underOOM            bool   // v1 memory.oom_control
	groupKills                          uint64 // oom_group_kill
}

type fakeProc struct {
	kill.Candidate
	alive bool
}

func newFakeKernel(t *testing.T) *fakeKernel {
	return &fakeKernel{t: t, root: t.TempDir(), now: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC),
		cgroups: map[string]*fakeCgroup{}, procs: map[int]*fakeProc{}, nextFd: 1000, polled: map[int]bool{}, killErrs: map[int]error{}, gates: map[string]chan struct{}{}, loopCPU: -1}
}

func (k *fakeKernel) kernel() Kernel {
	return Kernel{
		Mem: fakeMem{k, &cgroup.FS{Root: k.root}}, Notifier: fakeNotifier{k}, Killer: fakeKiller{k},
		NewPoller: func() (Poller, error) { return fakePoller{k}, nil }, NewWatcher: func() (DirWatcher, error) { return &fakeWatcher{k}, nil },
		Clock: k, Placer: k, OOMWait: true,
		SelfCgroup: func() (string, error) { k.mu.Lock(); defer k.mu.Unlock(); return k.self, k.selfErr },
	}
}

func (k *fakeKernel) Follow(cpu int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.followErr != nil {
		return k.followErr
	}
	k.loopCPU = cpu
	return nil
}

func (k *fakeKernel) Release() error { k.set(func() { k.loopCPU = -1 }); return nil }

func (k *fakeKernel) Now() time.Time { k.mu.Lock(); defer k.mu.Unlock(); return k.now }

func (k *fakeKernel) advance(d time.Duration) time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.now = k.now.Add(d)
	return k.now
}

// mkcg makes a cgroup directory with its values.
func (k *fakeKernel) mkcg(rel string, limit, usage uint64) *fakeCgroup {
	if err := os.MkdirAll(filepath.Join(k.root, rel), 0o755); err != nil {
		k.t.Fatal(err)
	}
	c := &fakeCgroup{limit: limit, usage: usage}
	k.mu.Lock()
	k.cgroups[rel] = c
	k.mu.Unlock()
	return c
}

// set changes a cgroup's values under the lock.
func (k *fakeKernel) set(f func()) { k.mu.Lock(); f(); k.mu.Unlock() }

// proc puts a process in cgroup rel.
func (k *fakeKernel) proc(rel string, pid int, rssKB uint64, adj int) {
	k.set(func() {
		k.procs[pid] = &fakeProc{alive: true, Candidate: kill.Candidate{Pid: pid, Comm: fmt.Sprint("p", pid), StartTime: uint64(pid),
			OOMScoreAdj: adj, OOMScore: int(rssKB), Cgroup: rel, Status: kill.Status{RssAnonKB: rssKB}}}
	})
}

func (k *fakeKernel) gone(rel string) error {
	return &os.PathError{Op: "read", Path: filepath.Join(k.root, rel), Err: syscall.ENOENT}
}

func (k *fakeKernel) cg(rel string) (*fakeCgroup, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, ok := k.cgroups[rel]
	if !ok || c.gone {
		return nil, k.gone(rel)
	}
	return c, nil
}

func (k *fakeKernel) fd() int { k.mu.Lock(); defer k.mu.Unlock(); k.nextFd++; return k.nextFd }

// fakeMem is the hierarchy: directories on disk, values in memory.
type fakeMem struct {
	k  *fakeKernel
	fs *cgroup.FS
}

func (m fakeMem) Version() cgroup.Version { return cgroup.VersionV1 }
func (m fakeMem) FS() *cgroup.FS          { return m.fs }
func (m fakeMem) LimitFile() string       { return "memory.limit_in_bytes" }
func (m fakeMem) Limit(rel string) (uint64, error) {
	m.k.wait("limit:" + rel)
	return m.read(rel, func(c *fakeCgroup) uint64 { return c.limit })
}
func (m fakeMem) Usage(rel string) (uint64, error) {
	return m.read(rel, func(c *fakeCgroup) uint64 { return c.usage })
}
func (m fakeMem) OOMKills(rel string) (uint64, error) {
	m.k.wait("oom:" + rel)
	return m.read(rel, func(c *fakeCgroup) uint64 { return c.oomKills })
}
func (m fakeMem) Stat(rel string) (cgroup.Stat, error) {
	r, err := m.read(rel, func(c *fakeCgroup) uint64 { return c.reclaimable })
	return cgroup.Stat{Reclaimable: r, Text: fmt.Sprintf("total_inactive_file %d|", r)}, err
}
func (m fakeMem) OOMGroupKills(rel string) (uint64, error) {
	return m.read(rel, func(c *fakeCgroup) uint64 { return c.groupKills })
}
func (m fakeMem) OOMGroup(rel string) (bool, error) {
	on, err := m.read(rel, func(c *fakeCgroup) uint64 {
		if c.oomGroup {
			return 1
		}
		return 0
	})
	return on == 1, err
}
func (m fakeMem) Reclaim(string, uint64, time.Duration) error { return nil }
func (m fakeMem) SoftLimit(rel string) (uint64, error)        { return cgroup.Unlimited, nil }
func (m fakeMem) SetSoftLimit(string, uint64) error           { return nil }
func (m fakeMem) Handle(rel string) (Files, error)            { return fakeFiles{m, rel}, nil }
func (m fakeMem) OOMKillDisabled(rel string) (bool, error) {
	v, err := m.read(rel, func(c *fakeCgroup) uint64 { return b2u(c.oomKillDisable) })
	return v == 1, err
}
func (m fakeMem) SetOOMKillDisable(rel string, disable bool) error {
	c, err := m.k.cg(rel)
	if err != nil {
		return err
	}
	m.k.mu.Lock()
	defer m.k.mu.Unlock()
	if m.k.holdErr != nil {
		return m.k.holdErr
	}
	c.oomKillDisable = disable
	if !disable {
		c.underOOM = false // the waiting tasks go on, to the kernel's OOM killer
	}
	return nil
}
func (m fakeMem) UnderOOM(rel string) (bool, error) {
	v, err := m.read(rel, func(c *fakeCgroup) uint64 { return b2u(c.underOOM) })
	return v == 1, err
}
func (m fakeMem) read(rel string, f func(*fakeCgroup) uint64) (uint64, error) {
	c, err := m.k.cg(rel)
	if err != nil {
		return 0, err
	}
	m.k.mu.Lock()
	defer m.k.mu.Unlock()
	return f(c), nil
}

type fakeFiles struct {
	m   fakeMem
	rel string
}

func (f fakeFiles) Usage() (uint64, error)     { return f.m.Usage(f.rel) }
func (f fakeFiles) Limit() (uint64, error)     { return f.m.Limit(f.rel) }
func (f fakeFiles) Stat() (cgroup.Stat, error) { return f.m.Stat(f.rel) }
func (f fakeFiles) Close()                     {}

// fakeNotifier's watches are bare fd numbers: nothing is registered; the
// test fires a watch by dispatching its fd.
type fakeNotifier struct{ k *fakeKernel }

type fakeWatch struct{ fd int }

func (w fakeWatch) Fd() int      { return w.fd }
func (w fakeWatch) Drain() error { return nil }
func (w fakeWatch) Close() error { return nil }

func (n fakeNotifier) Threshold(rel string, _ uint64) (notify.Watch, error) {
	if _, err := n.k.cg(rel); err != nil {
		return nil, err
	}
	return fakeWatch{n.k.fd()}, nil
}
func (n fakeNotifier) OOM(rel string) (notify.Watch, error) { return n.Threshold(rel, 0) }
func (n fakeNotifier) Sampler() notify.Sampler              { return nil }

type fakePoller struct{ k *fakeKernel }

func (p fakePoller) Add(fd int) error {
	p.k.set(func() { p.k.polled[fd] = true })
	return nil
}
func (p fakePoller) Remove(fd int) error {
	p.k.set(func() { delete(p.k.polled, fd) })
	return nil
}
func (p fakePoller) Wait(time.Duration) ([]int, bool, error) {
	p.k.mu.Lock()
	defer p.k.mu.Unlock()
	ready := p.k.ready
	p.k.ready = nil
	return ready, false, nil
}
func (p fakePoller) Wake()        {}
func (p fakePoller) Close() error { return nil }

type fakeWatcher struct{ k *fakeKernel }

func (*fakeWatcher) Fd() int          { return 1 }
func (*fakeWatcher) Add(string) error { return nil }
func (w *fakeWatcher) Watch(dir string) (int32, error) {
	w.k.wait("watch:/" + strings.TrimPrefix(strings.TrimPrefix(dir, w.k.root), "/"))
	return 1, nil
}
func (*fakeWatcher) Adopt(string, int32) []notify.DirChange  { return nil }
func (*fakeWatcher) Remove(string)                           {}
func (*fakeWatcher) Read() ([]notify.DirChange, bool, error) { return nil, false, nil }
func (*fakeWatcher) Close() error                            { return nil }

type fakeKiller struct{ k *fakeKernel }

func (f fakeKiller) Candidates(rel string, _ uint64) ([]kill.Candidate, error) {
	if _, err := f.k.cg(rel); err != nil {
		return nil, err
	}
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	var out []kill.Candidate
	for _, p := range f.k.procs {
		if p.alive && (p.Cgroup == rel || isUnder(p.Cgroup, rel)) {
			out = append(out, p.Candidate)
		}
	}
	return out, nil
}

func (f fakeKiller) Open(c kill.Candidate) (Victim, error) { return &fakeVictim{f.k, c}, nil }
func (f fakeKiller) KillContainer(string) ([]kill.Candidate, time.Time, error) {
	return nil, time.Time{}, kill.ErrNoVictim
}
func (f fakeKiller) KillGroup(rel string) ([]kill.Candidate, time.Time, error) {
	return f.KillContainer(rel)
}
func (f fakeKiller) Alive(c kill.Candidate) bool {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	p, ok := f.k.procs[c.Pid]
	return ok && p.alive
}

// FateOf: the fake's processes die only by a kill.
func (f fakeKiller) FateOf(c kill.Candidate) kill.Fate {
	if f.Alive(c) {
		return kill.Running
	}
	return kill.Killed
}

// Exited: a dead fake process is gone at once (no zombie).
func (f fakeKiller) Exited(c kill.Candidate) bool { return !f.Alive(c) }

// ExitFd: the fake has no pidfds; the guard asks Exited instead.
func (v *fakeVictim) ExitFd() (int, error) { return -1, unix.ENOSYS }

// Recheck: where the process is now, and whether it runs.
func (v *fakeVictim) Recheck() (kill.Now, error) {
	v.k.mu.Lock()
	defer v.k.mu.Unlock()
	p, ok := v.k.procs[v.c.Pid]
	if !ok || !p.alive {
		return kill.Now{Gone: true}, nil
	}
	return kill.Now{Inside: true, Cgroup: p.Cgroup, Dying: p.Dying, RSSKB: p.Status.RSSKB()}, nil
}

type fakeVictim struct {
	k *fakeKernel
	c kill.Candidate
}

func (v *fakeVictim) Inspected() kill.Candidate { return v.c }
func (v *fakeVictim) SetCgroup(rel string)      { v.c.Cgroup = rel }
func (v *fakeVictim) Close()                    {}
func (v *fakeVictim) Kill() (time.Time, error) {
	k := v.k
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.killErrs[v.c.Pid]; err != nil {
		return time.Time{}, err
	}
	p, ok := k.procs[v.c.Pid]
	if !ok || !p.alive {
		return time.Time{}, kill.ErrGone
	}
	p.Dying = true // until the test reaps it (alive = false)
	k.killed = append(k.killed, v.c.Pid)
	return k.now, nil
}

// fakeReporter is the stage: it keeps the facts.
func (k *fakeKernel) Acted(a event.Action)        { k.set(func() { k.acted = append(k.acted, a) }) }
func (k *fakeKernel) Counted(c event.CounterKill) { k.set(func() { k.counted = append(k.counted, c) }) }

// newFakeGuard is a guard on a fake kernel, set up as Run would be, its
// loop driven by the test (dispatch, runTimers).
func newFakeGuard(t *testing.T, cfg Config) (*Guard, *fakeKernel) {
	t.Helper()
	k := newFakeKernel(t)
	cfg.RealtimePriority = 0
	g, err := NewOn(cfg, k.kernel(), k, nil)
	if err != nil {
		t.Fatal(err)
	}
	g.poller, _ = k.kernel().NewPoller()
	g.inotify, _ = k.kernel().NewWatcher()
	g.nextReset = k.now.Add(time.Hour)
	t.Cleanup(func() { g.stopRegistrations(); g.releaseAll() })
	return g, k
}

// settleReads takes in every reading under way, as the loop would once
// the registrars are done with them (readings.go).
func settleReads(t *testing.T, g *Guard) {
	t.Helper()
	for g.readsInFlight > 0 {
		select {
		case rd := <-g.readsDone:
			g.takeRead(rd)
		case <-time.After(5 * time.Second):
			t.Fatalf("%d readings not done after 5s", g.readsInFlight)
		}
	}
}

// guardNew adds cgroup rel as a walk would find it and installs its
// registration, which the real guard makes off the loop. A cgroup the
// test made already (mkcg) keeps its other values.
func (k *fakeKernel) guardNew(g *Guard, rel string, limit, usage uint64) *cg {
	k.t.Helper()
	if f, err := k.cg(rel); err == nil {
		k.set(func() { f.limit, f.usage = limit, usage })
	} else {
		k.mkcg(rel, limit, usage)
	}
	g.add(rel)
	settleReads(k.t, g)
	select {
	case r := <-g.registered:
		g.install(r)
	case <-time.After(5 * time.Second):
		k.t.Fatal("no registration")
	}
	c := g.known[rel]
	if c == nil || !c.guarded() {
		k.t.Fatalf("cgroup %s not guarded", rel)
	}
	g.runTimers(k.now) // the look every new guard takes
	return c
}
