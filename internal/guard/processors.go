package guard

import (
	"runtime"
	"sync"
)

// A Go processor kept free for the loop. Its thread sleeps in epoll_wait
// without one, and on waking must take a processor back before it can run
// any Go code. When every processor is busy with the guard's other work,
// it parks (futex_wait) until one of them blocks, yields, or is preempted
// by the runtime after a 10 ms time slice. A goroutine making short system
// calls one after the other (the registrars' readings, the surveyor's
// walk) keeps its processor all the while: traced with ftrace through
// bench/preempt's reset-stall row, the woken loop parked 6-26 ms that way,
// at its start and after its kills, while a thread of the guard ran on
// the very CPU it had preempted.
//
// So Run adds one processor to GOMAXPROCS for as long as it runs, and the
// registrars' readings, the only background work of which many run at
// once, take a token from a pool one smaller than the processors there
// were before: with the surveyor, the background never holds more
// processors than there were, and the loop finds one idle. Blocking work
// (a registration's synchronize_rcu, a reset's inotify_add_watch calls)
// takes no token: a thread blocked in the kernel gives its processor up.

var extraProcs struct {
	sync.Mutex
	guards int // Runs under way (tests run several in one process)
	before int // GOMAXPROCS before the first
}

// reserveProcessor adds the loop's processor; release takes it away
// again.
func reserveProcessor() (release func()) {
	extraProcs.Lock()
	defer extraProcs.Unlock()
	if extraProcs.guards == 0 {
		extraProcs.before = runtime.GOMAXPROCS(0)
	}
	extraProcs.guards++
	runtime.GOMAXPROCS(extraProcs.before + extraProcs.guards)
	return func() {
		extraProcs.Lock()
		defer extraProcs.Unlock()
		extraProcs.guards--
		runtime.GOMAXPROCS(extraProcs.before + extraProcs.guards)
	}
}

// backgroundTokens is the pool the registrars' readings draw from: one
// fewer than the processors there are without the loop's (the surveyor
// has one), and at least one.
func backgroundTokens(background int) chan struct{} {
	return make(chan struct{}, max(background-1, 1))
}

// inBackground runs f, CPU-bound work off the loop, holding a token.
func (g *Guard) inBackground(f func()) {
	g.tokens <- struct{}{}
	defer func() { <-g.tokens }()
	f()
}
