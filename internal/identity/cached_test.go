package identity

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/event"
)

// countingResolver stands in for a runtime in the cache's own tests: what
// is under test here is when the cache asks, not what a runtime says.
type countingResolver struct {
	rt    string
	calls atomic.Int32
	fn    func(ctx context.Context, id ID) (Info, error)
}

func (r *countingResolver) Runtime() string { return r.rt }

func (r *countingResolver) Resolve(ctx context.Context, id ID) (event.Identity, error) {
	info, err := r.Inspect(ctx, id)
	return info.Identity, err
}

func (r *countingResolver) Inspect(ctx context.Context, id ID) (Info, error) {
	r.calls.Add(1)
	return r.fn(ctx, id)
}

func named(name string) func(context.Context, ID) (Info, error) {
	return func(_ context.Context, id ID) (Info, error) {
		return Info{Identity: event.Identity{ContainerName: name, PodName: "p"}, Running: true, InitPid: 42}, nil
	}
}

func cid(n int) string { return fmt.Sprintf("%064x", n) }

// fakeClock lets a test move the cache's time.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestCachedTTL(t *testing.T) {
	r := &countingResolver{fn: named("app")}
	c := NewCached(time.Minute, 10, r)
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	c.now = clk.now
	id := ID{Runtime: RuntimeContainerd, ContainerID: cid(1), PodUID: "3d6329e5-455f-11e9-a7e5-06925242d7ea"}
	for i := 0; i < 3; i++ {
		got, err := c.Resolve(context.Background(), id)
		want := event.Identity{Runtime: RuntimeContainerd, ContainerID: cid(1), ContainerName: "app", PodName: "p", PodUID: id.PodUID}
		if err != nil || got != want {
			t.Fatalf("Resolve = %+v, %v; want %+v", got, err, want)
		}
	}
	if n := r.calls.Load(); n != 1 {
		t.Fatalf("%d lookups within the TTL; want 1", n)
	}
	clk.add(61 * time.Second)
	if pid, err := c.InitPid(context.Background(), id); err != nil || pid != 42 {
		t.Fatalf("InitPid = %d, %v", pid, err)
	}
	if n := r.calls.Load(); n != 2 {
		t.Fatalf("%d lookups after expiry; want 2", n)
	}
}

func TestCachedNegative(t *testing.T) {
	fail := true
	var mu sync.Mutex
	r := &countingResolver{fn: func(ctx context.Context, id ID) (Info, error) {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			return Info{}, fmt.Errorf("docker /x.sock: %w", ErrNotFound)
		}
		return named("late")(ctx, id)
	}}
	c := NewCached(time.Minute, 10, r)
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	c.now = clk.now
	id := ID{ContainerID: cid(2)}
	for i := 0; i < 5; i++ {
		got, err := c.Resolve(context.Background(), id)
		if !errors.Is(err, ErrNotFound) || got.ContainerID != cid(2) {
			t.Fatalf("Resolve = %+v, %v", got, err)
		}
	}
	if n := r.calls.Load(); n != 1 {
		t.Fatalf("%d lookups of a failing container; want 1 per NegativeTTL", n)
	}
	mu.Lock()
	fail = false
	mu.Unlock()
	clk.add(DefaultNegativeTTL + time.Millisecond)
	if got, err := c.Resolve(context.Background(), id); err != nil || got.ContainerName != "late" {
		t.Fatalf("after NegativeTTL: %+v, %v", got, err)
	}
}

// A runtime that hangs costs two Timeouts (the lookup is tried once more),
// then nothing for NegativeTTL.
func TestCachedTimeout(t *testing.T) {
	r := &countingResolver{fn: func(ctx context.Context, id ID) (Info, error) {
		<-ctx.Done()
		return Info{}, ctx.Err()
	}}
	c := NewCached(time.Minute, 10, r)
	c.Timeout = 50 * time.Millisecond
	id := ID{ContainerID: cid(3)}
	start := time.Now()
	if _, err := c.Resolve(context.Background(), id); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("a hung runtime held the caller %v", d)
	}
	start = time.Now()
	if _, err := c.Resolve(context.Background(), id); err == nil || time.Since(start) > 10*time.Millisecond {
		t.Fatalf("second call: %v after %v; want the cached failure at once", err, time.Since(start))
	}
	// A caller with a shorter deadline of its own is not held by the lookup.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel()
	c.Timeout = time.Second
	if _, err := c.Resolve(ctx, ID{ContainerID: cid(4)}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("short caller: %v", err)
	}
}

// A runtime slow for a moment: the lookup that ran out of Timeout is tried
// once more for a caller that can still wait, and the second answer is the
// caller's (on a busy cgroup v2 node, the first lookup of a container just
// killed timed out, and its Event went on the Node instead of the Pod).
func TestCachedRetriesATimedOutLookup(t *testing.T) {
	var slow atomic.Bool
	slow.Store(true)
	r := &countingResolver{fn: func(ctx context.Context, id ID) (Info, error) {
		if slow.Swap(false) {
			<-ctx.Done()
			return Info{}, ctx.Err()
		}
		return named("app")(ctx, id)
	}}
	c := NewCached(time.Minute, 10, r)
	c.Timeout = 50 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	got, err := c.Resolve(ctx, ID{ContainerID: cid(5)})
	if err != nil || got.ContainerName != "app" {
		t.Fatalf("Resolve = %+v, %v; want the second lookup's answer", got, err)
	}
	if n := r.calls.Load(); n != 2 {
		t.Fatalf("%d lookups, want 2", n)
	}
	// Not for a caller out of time: its short wait ends first.
	slow.Store(true)
	short, cancel2 := context.WithTimeout(context.Background(), 120*time.Millisecond)
	defer cancel2()
	if _, err := c.Resolve(short, ID{ContainerID: cid(6)}); err == nil {
		t.Fatal("a caller with 120 ms got an answer after a 50 ms timeout and no time for a retry")
	}
}

func TestCachedSingleFlight(t *testing.T) {
	release := make(chan struct{})
	r := &countingResolver{fn: func(ctx context.Context, id ID) (Info, error) {
		<-release
		return named("app")(ctx, id)
	}}
	c := NewCached(time.Minute, 10, r)
	c.Timeout = 10 * time.Second
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := c.Resolve(context.Background(), ID{ContainerID: cid(5)})
			if err == nil && got.ContainerName != "app" {
				err = fmt.Errorf("got %+v", got)
			}
			errs <- err
		}()
	}
	time.Sleep(20 * time.Millisecond)
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := r.calls.Load(); n != 1 {
		t.Fatalf("%d lookups for 20 concurrent callers; want 1", n)
	}
}

func TestCachedBounded(t *testing.T) {
	r := &countingResolver{fn: named("x")}
	c := NewCached(time.Hour, 8, r)
	for i := 0; i < 100; i++ {
		if _, err := c.Resolve(context.Background(), ID{ContainerID: cid(i)}); err != nil {
			t.Fatal(err)
		}
		if c.Len() > 8 {
			t.Fatalf("%d entries; max 8", c.Len())
		}
	}
	// The most recent are kept, the oldest dropped.
	before := r.calls.Load()
	_, _ = c.Resolve(context.Background(), ID{ContainerID: cid(99)})
	if r.calls.Load() != before {
		t.Fatal("the most recent entry was evicted")
	}
	_, _ = c.Resolve(context.Background(), ID{ContainerID: cid(0)})
	if r.calls.Load() != before+1 {
		t.Fatal("the oldest entry was kept")
	}
}

// Resolvers are asked in order; one for another runtime is skipped; the
// errors of all are reported.
func TestCachedOrder(t *testing.T) {
	docker := &countingResolver{rt: RuntimeDocker, fn: func(context.Context, ID) (Info, error) {
		return Info{}, fmt.Errorf("docker /var/run/docker.sock: %w", ErrNotFound)
	}}
	cri := &countingResolver{fn: named("from-cri")}
	c := NewCached(time.Minute, 10, docker, cri)
	got, err := c.Resolve(context.Background(), ID{Runtime: RuntimeContainerd, ContainerID: cid(1)})
	if err != nil || got.ContainerName != "from-cri" || docker.calls.Load() != 0 {
		t.Fatalf("containerd ID: %+v, %v, docker asked %d times", got, err, docker.calls.Load())
	}
	got, err = c.Resolve(context.Background(), ID{ContainerID: cid(2)})
	if err != nil || got.ContainerName != "from-cri" || docker.calls.Load() != 1 {
		t.Fatalf("unknown runtime: %+v, %v, docker asked %d times", got, err, docker.calls.Load())
	}
	failing := &countingResolver{fn: func(context.Context, ID) (Info, error) {
		return Info{}, errors.New("cri /run/containerd/containerd.sock: connection refused")
	}}
	c = NewCached(time.Minute, 10, docker, failing)
	_, err = c.Resolve(context.Background(), ID{ContainerID: cid(3)})
	if err == nil || !strings.Contains(err.Error(), "docker.sock") || !strings.Contains(err.Error(), "containerd.sock") {
		t.Fatalf("err = %v; want both sockets named", err)
	}
	if _, err := c.Resolve(context.Background(), ID{}); !errors.Is(err, ErrNothingToResolve) {
		t.Fatalf("empty ID: %v", err)
	}
	if _, err := NewCached(0, 0).Resolve(context.Background(), ID{ContainerID: cid(1)}); err == nil {
		t.Fatal("no resolvers: no error")
	}
}
