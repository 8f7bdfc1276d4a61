package guard

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/notify"
)

const unl = cgroup.Unlimited

// What a walk hands the loop: the differences from what the loop knew
// (the shadow), never the whole hierarchy.
func TestCompareHandsOverDifferences(t *testing.T) {
	for _, tc := range []struct {
		name    string
		found   []found
		shadow  map[string]uint64
		partial bool // the walk stopped short (EMFILE)
		want    []change
	}{
		{name: "nothing new: nothing handed over",
			found:  []found{{"/", unl}, {"/a", fLimit}, {"/b", unl}},
			shadow: map[string]uint64{"/": unl, "/a": fLimit, "/b": unl}},
		{name: "appeared, as walked, the limited first",
			found:  []found{{"/", unl}, {"/a", unl}, {"/a/x", fLimit}, {"/a/y", unl}, {"/b", fLimit}},
			shadow: map[string]uint64{"/": unl},
			want:   []change{{appeared, "/a/x"}, {appeared, "/b"}, {appeared, "/a"}, {appeared, "/a/y"}}},
		{name: "vanished, in order",
			found:  []found{{"/", unl}},
			shadow: map[string]uint64{"/": unl, "/b": unl, "/a": fLimit},
			want:   []change{{vanished, "/a"}, {vanished, "/b"}}},
		{name: "limits moved: set, raised, lifted",
			found:  []found{{"/", unl}, {"/a", fLimit}, {"/b", 2 * fLimit}, {"/c", unl}},
			shadow: map[string]uint64{"/": unl, "/a": unl, "/b": fLimit, "/c": fLimit},
			want:   []change{{limitMoved, "/a"}, {limitMoved, "/b"}, {limitMoved, "/c"}}},
		{name: "a walk stopped short: nothing taken for vanished", partial: true,
			found:  []found{{"/", unl}, {"/new", fLimit}},
			shadow: map[string]uint64{"/": unl, "/unlisted": fLimit},
			want:   []change{{appeared, "/new"}}},
		{name: "all at once",
			found:  []found{{"/", unl}, {"/new", fLimit}, {"/moved", fLimit}},
			shadow: map[string]uint64{"/": unl, "/moved": unl, "/gone": fLimit},
			want:   []change{{appeared, "/new"}, {limitMoved, "/moved"}, {vanished, "/gone"}}},
		{name: "the start: everything appeared, the limited first",
			found:  []found{{"/", unl}, {"/u", unl}, {"/l", fLimit}},
			shadow: map[string]uint64{},
			want:   []change{{appeared, "/l"}, {appeared, "/"}, {appeared, "/u"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := compare(tc.found, tc.shadow, !tc.partial); !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// The shadow follows the loop's journal: what it added, re-limited and
// forgot.
func TestJournalKeepsTheShadow(t *testing.T) {
	g, k := newFakeGuard(t, DefaultConfig())
	k.mkcg("/a", unl, 0)
	k.mkcg("/b", fLimit, 0)
	shadow := map[string]uint64{}
	g.add("/a")
	g.add("/b")
	settleReads(t, g)
	takeJournal(t, g, shadow)
	if want := map[string]uint64{"/a": unl, "/b": fLimit}; !mapsEqual(shadow, want) {
		t.Fatalf("shadow %v, want %v", shadow, want)
	}
	k.set(func() { k.cgroups["/a"].limit = fLimit })
	g.refreshLimit(g.known["/a"])
	settleReads(t, g)
	g.forget(g.known["/b"])
	takeJournal(t, g, shadow)
	if want := map[string]uint64{"/a": fLimit}; !mapsEqual(shadow, want) {
		t.Fatalf("shadow %v, want %v", shadow, want)
	}
	takeJournal(t, g, shadow)
	if want := map[string]uint64{"/a": fLimit}; !mapsEqual(shadow, want) {
		t.Fatalf("an empty journal changed the shadow: %v", shadow)
	}
}

func takeJournal(t *testing.T, g *Guard, shadow map[string]uint64) {
	t.Helper()
	g.handJournal()
	applyJournal(shadow, <-g.journals)
}

func mapsEqual(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// Each handed-over difference is checked against what the loop knows when
// it applies it: the walk compared with a moment ago.
func TestApplyHandedOverDifferences(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setup makes the kernel's and the loop's state; then ch is applied
		setup func(g *Guard, k *fakeKernel)
		ch    change
		check func(t *testing.T, g *Guard, k *fakeKernel)
	}{
		{name: "appeared, limited: known and registering",
			setup: func(g *Guard, k *fakeKernel) { k.mkcg("/pod", fLimit, 0) },
			ch:    change{appeared, "/pod"},
			check: func(t *testing.T, g *Guard, k *fakeKernel) {
				if c := g.known["/pod"]; c == nil || !c.registering || c.limit != fLimit {
					t.Errorf("not registering: %+v", c)
				}
			}},
		{name: "appeared, unlimited: known, not guarded",
			setup: func(g *Guard, k *fakeKernel) { k.mkcg("/pod", unl, 0) },
			ch:    change{appeared, "/pod"},
			check: func(t *testing.T, g *Guard, k *fakeKernel) {
				if c := g.known["/pod"]; c == nil || c.registering || c.guarded() {
					t.Errorf("%+v", c)
				}
			}},
		{name: "appeared but known meanwhile (inotify was first): the guard kept",
			setup: func(g *Guard, k *fakeKernel) { k.guardNew(g, "/pod", fLimit, 0) },
			ch:    change{appeared, "/pod"},
			check: func(t *testing.T, g *Guard, k *fakeKernel) {
				if c := g.known["/pod"]; c == nil || !c.guarded() || c.registering {
					t.Errorf("%+v", c)
				}
			}},
		{name: "appeared and gone again before applied: not known",
			setup: func(g *Guard, k *fakeKernel) { k.mkcg("/pod", fLimit, 0).gone = true },
			ch:    change{appeared, "/pod"},
			check: func(t *testing.T, g *Guard, k *fakeKernel) {
				if c := g.known["/pod"]; c != nil {
					t.Errorf("a gone cgroup known: %+v", c)
				}
			}},
		{name: "vanished, its directory gone: forgotten, unguarded",
			setup: func(g *Guard, k *fakeKernel) { k.guardNew(g, "/pod", fLimit, 0); rmdir(t, k, "/pod") },
			ch:    change{vanished, "/pod"},
			check: func(t *testing.T, g *Guard, k *fakeKernel) {
				if g.known["/pod"] != nil || g.guarded != 0 {
					t.Errorf("still known or guarded (%d)", g.guarded)
				}
			}},
		{name: "vanished, but there again (made anew meanwhile): kept",
			setup: func(g *Guard, k *fakeKernel) { k.guardNew(g, "/pod", fLimit, 0) },
			ch:    change{vanished, "/pod"},
			check: func(t *testing.T, g *Guard, k *fakeKernel) {
				if c := g.known["/pod"]; c == nil || !c.guarded() {
					t.Errorf("a cgroup that is there was unguarded")
				}
			}},
		{name: "limit moved: read again and re-armed",
			setup: func(g *Guard, k *fakeKernel) {
				k.guardNew(g, "/pod", fLimit, 0)
				k.set(func() { k.cgroups["/pod"].limit = 2 * fLimit })
			},
			ch: change{limitMoved, "/pod"},
			check: func(t *testing.T, g *Guard, k *fakeKernel) {
				if c := g.known["/pod"]; c.limit != 2*fLimit || !c.registering {
					t.Errorf("not re-armed: limit %d", c.limit)
				}
			}},
		{name: "limit moved in a stale walk (the loop read the newer one): nothing",
			setup: func(g *Guard, k *fakeKernel) { k.guardNew(g, "/pod", fLimit, 0) },
			ch:    change{limitMoved, "/pod"},
			check: func(t *testing.T, g *Guard, k *fakeKernel) {
				if c := g.known["/pod"]; !c.guarded() || c.registering || c.armedLimit != fLimit {
					t.Errorf("%+v", c)
				}
			}},
		{name: "limit lifted: unguarded",
			setup: func(g *Guard, k *fakeKernel) {
				k.guardNew(g, "/pod", fLimit, 0)
				k.set(func() { k.cgroups["/pod"].limit = unl })
			},
			ch: change{limitMoved, "/pod"},
			check: func(t *testing.T, g *Guard, k *fakeKernel) {
				if c := g.known["/pod"]; c == nil || c.guarded() || g.guarded != 0 {
					t.Errorf("%+v", c)
				}
			}},
		{name: "limit moved of a cgroup forgotten meanwhile: nothing",
			ch: change{limitMoved, "/pod"},
			check: func(t *testing.T, g *Guard, k *fakeKernel) {
				if g.known["/pod"] != nil {
					t.Error("known")
				}
			}},
		{name: "created (inotify) with what was made below before its watch",
			setup: func(g *Guard, k *fakeKernel) {
				k.mkcg("/pod", unl, 0)
				k.mkcg("/pod/c1", fLimit, 0)
				k.mkcg("/pod/c1/x", unl, 0)
			},
			ch: change{created, "/pod"},
			check: func(t *testing.T, g *Guard, k *fakeKernel) {
				for _, rel := range []string{"/pod", "/pod/c1", "/pod/c1/x"} {
					if g.known[rel] == nil {
						t.Errorf("%s not known", rel)
					}
				}
			}},
		{name: "removed (inotify): the tree below is forgotten too, the sibling kept",
			setup: func(g *Guard, k *fakeKernel) {
				k.mkcg("/pod", unl, 0)
				k.mkcg("/pod/c1", unl, 0)
				k.mkcg("/pod/c1/x", unl, 0)
				k.mkcg("/podx", unl, 0)
				g.addTree("/pod")
				g.add("/podx")
				settleReads(t, g)
			},
			ch: change{removed, "/pod"},
			check: func(t *testing.T, g *Guard, k *fakeKernel) {
				if len(g.known) != 1 || g.known["/podx"] == nil {
					t.Errorf("known %v", keys(g.known))
				}
				if len(g.parents) != 1 || g.parents["/"] != 1 {
					t.Errorf("parents %v", g.parents)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, k := newFakeGuard(t, DefaultConfig())
			if tc.setup != nil {
				tc.setup(g, k)
			}
			g.queue(tc.ch)
			g.applyChanges()
			if len(g.changes) != 0 {
				t.Fatalf("%d changes left", len(g.changes))
			}
			settleReads(t, g)
			tc.check(t, g, k)
		})
	}
}

func rmdir(t *testing.T, k *fakeKernel, rel string) {
	t.Helper()
	k.set(func() { k.cgroups[rel].gone = true })
	if err := unix.Rmdir(filepath.Join(k.root, rel)); err != nil {
		t.Fatal(err)
	}
}

func keys(m map[string]*cg) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// A walk that finds 10,000 cgroups is applied in batches: the loop waits
// (serving crossings) between two, with a timeout of zero while any are
// left, and the guard counts as started only once all are applied.
func TestChangesAppliedInBatches(t *testing.T) {
	g, k := newFakeGuard(t, DefaultConfig())
	const n = 10000
	for i := 0; i < n; i++ {
		rel := fmt.Sprintf("/c%05d", i)
		k.mkcg(rel, unl, 0)
		g.queue(change{appeared, rel})
	}
	g.started = k.now
	turns := 0
	for len(g.changes) > 0 {
		if d := g.nextTimeout(k.now); d != 0 {
			t.Fatalf("the loop would sleep %v with %d changes queued", d, len(g.changes))
		}
		before := len(g.known)
		g.applyChanges()
		if got := len(g.known) - before; got > changeBatch || got == 0 {
			t.Fatalf("turn %d applied %d changes, want 1 to %d", turns, got, changeBatch)
		}
		if len(g.changes) > 0 && g.started.IsZero() {
			t.Fatal("started before the cgroups found at the start were known")
		}
		turns++
	}
	if len(g.known) != n || turns < n/changeBatch {
		t.Fatalf("%d known after %d turns", len(g.known), turns)
	}
	if g.started.IsZero() && g.readsInFlight > 0 {
		t.Error("started with readings under way")
	}
	settleReads(t, g)
	if !g.started.IsZero() {
		t.Error("not started once all were applied and read")
	}
}

// recWatcher is a DirWatcher that records its watches; Add fails with
// failOn's error for the directory failOn names.
type recWatcher struct {
	mu      sync.Mutex
	fd      int
	watched []string
	closed  bool
	failOn  string
	failErr error
}

func (w *recWatcher) Fd() int { return w.fd }
func (w *recWatcher) has(dir string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Contains(w.watched, dir)
}
func (w *recWatcher) isClosed() bool { w.mu.Lock(); defer w.mu.Unlock(); return w.closed }
func (w *recWatcher) Add(dir string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failErr != nil && strings.HasSuffix(dir, w.failOn) {
		return w.failErr
	}
	w.watched = append(w.watched, dir)
	return nil
}
func (w *recWatcher) Watch(dir string) (int32, error) {
	if err := w.Add(dir); err != nil {
		return -1, err
	}
	return 1, nil
}
func (w *recWatcher) Adopt(string, int32) []notify.DirChange  { return nil }
func (w *recWatcher) Remove(string)                           {}
func (w *recWatcher) Read() ([]notify.DirChange, bool, error) { return nil, false, nil }
func (w *recWatcher) Close() error                            { w.mu.Lock(); w.closed = true; w.mu.Unlock(); return nil }

// An inotify reset, by the surveyor: the new instance is handed over with
// every directory watched, and only then the walk's differences; the old
// instance is out of the epoll set and closed. Where the new instance
// cannot watch every directory (max_user_watches), the old one stays in
// use, the fault is counted, and the reset is tried again sooner.
func TestResetHandedOver(t *testing.T) {
	for _, tc := range []struct {
		name    string
		failErr error // the new instance's Add of /a/x fails so
	}{
		{name: "every directory watched: the new instance in use"},
		{name: "out of watches: the old instance kept", failErr: unix.ENOSPC},
		{name: "a directory gone while watched: no matter", failErr: unix.ENOENT},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, k := newFakeGuard(t, DefaultConfig())
			m := &faultCount{}
			g.metrics = m
			old := &recWatcher{fd: 7}
			g.inotify = old
			_ = g.poller.Add(old.fd)
			k.mkcg("/a", unl, 0)
			k.mkcg("/a/x", fLimit, 0)
			k.mkcg("/b", unl, 0)
			g.add("/")
			g.add("/a")
			settleReads(t, g)
			// /a/x and /b are made while the old instance is not read:
			// the reset's walk finds them.
			fresh := &recWatcher{fd: 8, failOn: "/a/x", failErr: tc.failErr}
			g.kernel.NewWatcher = func() (DirWatcher, error) { return fresh, nil }
			quit := make(chan struct{})
			done := make(chan struct{})
			go func() { defer close(done); g.surveyor(quit) }()
			defer func() { close(quit); <-done }()
			g.startReset()
			var r reset
			select {
			case r = <-g.resets:
			case <-time.After(5 * time.Second):
				t.Fatal("no reset handed over")
			}
			g.installReset(r)
			ok := tc.failErr == nil || errors.Is(tc.failErr, unix.ENOENT)
			if !ok {
				if g.inotify != old || m.n != 1 || !fresh.closed || !g.inotifyFailing {
					t.Fatalf("a refused reset: in use %v, faults %d, new closed %v", g.inotify == old, m.n, fresh.closed)
				}
				if want := k.now.Add(inotifyRetry); !g.nextReset.Equal(want) {
					t.Errorf("next reset %v, want %v", g.nextReset, want)
				}
				return
			}
			if g.inotify != fresh || m.n != 0 || fresh.closed {
				t.Fatalf("new instance in use %v, faults %d", g.inotify == fresh, m.n)
			}
			var want []string
			for _, rel := range []string{"/", "/a", "/a/x", "/b"} {
				if rel != "/a/x" || tc.failErr == nil {
					want = append(want, g.absPath(rel))
				}
			}
			slices.Sort(fresh.watched)
			if !slices.Equal(fresh.watched, want) {
				t.Errorf("watched %v, want %v", fresh.watched, want)
			}
			// The walk's differences come after the journal asked for.
			select {
			case <-g.journalAsk:
				g.handJournal()
			case <-time.After(5 * time.Second):
				t.Fatal("the surveyor did not ask for the journal")
			}
			var diff []change
			select {
			case diff = <-g.walks:
			case <-time.After(5 * time.Second):
				t.Fatal("no differences handed over")
			}
			slices.SortFunc(diff, func(a, b change) int { return strings.Compare(a.rel, b.rel) }) // in the walk's order, which is the directories'
			if want := []change{{appeared, "/a/x"}, {appeared, "/b"}}; !slices.Equal(diff, want) {
				t.Errorf("differences %v, want %v", diff, want)
			}
			if _, polled := k.polled[old.fd]; polled {
				t.Error("the old instance is still in the epoll set")
			}
			g.aside.Wait()
			if !old.closed {
				t.Error("the old instance is not closed")
			}
		})
	}
}

type faultCount struct {
	NopMetrics
	n int
}

func (f *faultCount) Fault(string) { f.n++ }
