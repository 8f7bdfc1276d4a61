package guard

import (
	"fmt"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// useRealtime puts the calling OS thread (the loop's, locked) under
// SCHED_FIFO at prio. The race with the kernel's OOM killer is won or lost
// in the time a fast allocator takes to fill the margin, often a few
// hundred microseconds: on a busy node a normal thread may not even be
// scheduled in that time, while a real-time one preempts any normal task at
// once. The loop sleeps in epoll_wait nearly always, and the kernel's RT
// throttling (sched_rt_runtime_us) bounds what a runaway could take. The
// returned function puts the thread back to SCHED_OTHER.
func useRealtime(prio int) (restore func()) {
	if prio <= 0 {
		return func() {}
	}
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: uint32(prio)}
	if err := unix.SchedSetAttr(0, &attr, 0); err != nil {
		klog.Warningf("real-time priority %d for the guard loop: %v (running at normal priority; it may lose races on a busy node)", prio, err)
		return func() {}
	}
	return func() {
		normal := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_NORMAL}
		if err := unix.SchedSetAttr(0, &normal, 0); err != nil {
			klog.Errorf("guard loop: back to normal scheduling: %v", err)
		}
	}
}

// ValidRealtimePriority checks a SCHED_FIFO priority (0 disables).
func ValidRealtimePriority(p int) error {
	if p < 0 || p > 99 {
		return fmt.Errorf("real-time priority %d outside 0..99", p)
	}
	return nil
}
