package identity

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/oom-guard/oom-guard/internal/event"
)

// Defaults for Cached.
const (
	DefaultTTL         = time.Minute
	DefaultMax         = 4096
	DefaultTimeout     = 250 * time.Millisecond
	DefaultNegativeTTL = 5 * time.Second
)

// Cached puts a bounded, expiring cache in front of resolvers. One lookup
// per container runs at a time however many callers ask; each runtime call
// gets at most Timeout; a failure is remembered for NegativeTTL so that a
// dead or slow runtime costs the kill path one Timeout per few seconds, not
// one per event.
type Cached struct {
	// Timeout bounds one lookup across all resolvers. Set before first use.
	Timeout time.Duration
	// NegativeTTL is how long a failed lookup is remembered. Set before
	// first use.
	NegativeTTL time.Duration

	ttl time.Duration
	max int
	rs  []Resolver
	now func() time.Time

	mu  sync.Mutex
	m   map[string]*entry
	lru *list.List // of *entry, most recent first
}

type entry struct {
	key      string
	done     chan struct{} // closed when info and err are final
	info     Info
	err      error
	timedOut bool // the lookup ran out of Timeout
	retry    bool // the lookup is a retry of one that did: not retried again
	expires  time.Time
	elem     *list.Element
}

// NewCached caches what rs tell for ttl (DefaultTTL if <= 0), at most max
// entries (DefaultMax if <= 0), least recently used dropped first. The
// resolvers are asked in order; the first that knows the container wins,
// and one that serves another runtime than the path names is skipped.
func NewCached(ttl time.Duration, max int, rs ...Resolver) *Cached {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	if max <= 0 {
		max = DefaultMax
	}
	return &Cached{
		Timeout:     DefaultTimeout,
		NegativeTTL: DefaultNegativeTTL,
		ttl:         ttl,
		max:         max,
		rs:          rs,
		now:         time.Now,
		m:           make(map[string]*entry),
		lru:         list.New(),
	}
}

// Resolve names the container or pod. On error the Identity still holds
// what the path told.
func (c *Cached) Resolve(ctx context.Context, id ID) (event.Identity, error) {
	info, err := c.Inspect(ctx, id)
	return info.Identity, err
}

// InitPid is the container's init pid as last seen within the TTL. A
// container restarted in place (docker restart) keeps its ID and gets a new
// init: call Forget when the cached pid is found dead.
func (c *Cached) InitPid(ctx context.Context, id ID) (int, error) {
	if id.ContainerID == "" {
		return 0, ErrNothingToResolve
	}
	pid, err := initPid(c.Inspect(ctx, id))
	if errors.Is(err, ErrNoPid) {
		return 0, fmt.Errorf("container %s: %w", short(id.ContainerID), err)
	}
	return pid, err
}

// Inspect returns the cached Info, asking the resolvers when there is none
// or it expired. It returns when the lookup ends, Timeout passes, or ctx is
// done, whichever is first.
func (c *Cached) Inspect(ctx context.Context, id ID) (Info, error) {
	key := cacheKey(id)
	if key == "" {
		return Info{Identity: fromPath(id)}, ErrNothingToResolve
	}
	for retried := false; ; retried = true {
		e := c.entryFor(ctx, id, key, retried)
		select {
		case <-e.done:
		case <-ctx.Done():
			return Info{Identity: fromPath(id)}, ctx.Err()
		}
		// A lookup that ran out of its own Timeout (a runtime slow for a
		// moment, e.g. a node busy restarting the very container whose kill
		// is being reported, seen on a cgroup v2 node: the event then went
		// on the Node for want of the pod's name) is tried once more, not
		// remembered, for a caller that can still wait.
		if !retried && !e.retry && e.timedOut && ctx.Err() == nil && timeLeft(ctx) > 100*time.Millisecond {
			c.mu.Lock()
			c.remove(e)
			c.mu.Unlock()
			continue
		}
		info := e.info
		info.Identity = merge(info.Identity, id)
		return info, e.err
	}
}

// timeLeft is how long ctx may still wait (an hour: no deadline).
func timeLeft(ctx context.Context) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		return time.Until(dl)
	}
	return time.Hour
}

// Forget drops what is cached about the ID's container (or pod).
func (c *Cached) Forget(id ID) {
	key := cacheKey(id)
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[key]; ok {
		c.remove(e)
	}
}

// Len is the number of entries, in flight or not.
func (c *Cached) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

func cacheKey(id ID) string {
	switch {
	case id.ContainerID != "":
		return id.ContainerID
	case id.PodUID != "":
		return "pod/" + id.PodUID
	}
	return ""
}

// entryFor returns a fresh or in-flight entry, starting a lookup if needed.
func (c *Cached) entryFor(ctx context.Context, id ID, key string, retry bool) *entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[key]; ok {
		select {
		case <-e.done:
			if c.now().Before(e.expires) {
				c.lru.MoveToFront(e.elem)
				return e
			}
			c.remove(e)
		default:
			return e // in flight: share it
		}
	}
	e := &entry{key: key, done: make(chan struct{}), retry: retry}
	e.elem = c.lru.PushFront(e)
	c.m[key] = e
	for c.lru.Len() > c.max {
		c.remove(c.lru.Back().Value.(*entry))
	}
	// The lookup outlives the caller that started it (others may be
	// waiting for it), bounded by Timeout rather than by that caller.
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.Timeout)
	go func() {
		defer cancel()
		info, err := c.lookup(lctx, id)
		c.mu.Lock()
		e.info, e.err = info, err
		e.timedOut = err != nil && errors.Is(lctx.Err(), context.DeadlineExceeded)
		if err != nil {
			e.expires = c.now().Add(c.NegativeTTL)
		} else {
			e.expires = c.now().Add(c.ttl)
		}
		close(e.done)
		c.mu.Unlock()
	}()
	return e
}

// remove drops e from the index; callers waiting on it still get its result.
func (c *Cached) remove(e *entry) {
	if c.m[e.key] == e {
		delete(c.m, e.key)
	}
	c.lru.Remove(e.elem)
}

func (c *Cached) lookup(ctx context.Context, id ID) (Info, error) {
	var errs []error
	for _, r := range c.rs {
		if rn, ok := r.(runtimeNamer); ok && id.Runtime != "" {
			if rt := rn.Runtime(); rt != "" && rt != id.Runtime {
				continue
			}
		}
		var info Info
		var err error
		if in, ok := r.(Inspector); ok {
			info, err = in.Inspect(ctx, id)
		} else {
			info.Identity, err = r.Resolve(ctx, id)
		}
		if err == nil {
			return info, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return Info{}, fmt.Errorf("no resolver for runtime %q", id.Runtime)
	}
	return Info{}, errors.Join(errs...)
}
