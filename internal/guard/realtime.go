package guard

import (
	"fmt"
	"unsafe"

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
	if err := setScheduler(unix.SCHED_FIFO, prio); err != nil {
		// In a container the kernel refuses SCHED_FIFO even to a
		// privileged process when real-time group scheduling gives its
		// cpu cgroup no real-time budget (cpu.rt_runtime_us 0, the
		// default). The strongest normal priority is the next best.
		return useHighestNice(prio, err)
	}
	return func() {
		if err := setScheduler(unix.SCHED_NORMAL, 0); err != nil {
			klog.Errorf("guard loop: back to normal scheduling: %v", err)
		}
	}
}

// setScheduler sets the calling thread's policy with sched_setscheduler(2),
// which every kernel has; sched_setattr came only with 3.14 (CentOS 7's
// 3.10 answers ENOSYS), and the guard needs nothing it adds.
func setScheduler(policy, prio int) error {
	param := struct{ priority int32 }{int32(prio)}
	_, _, errno := unix.Syscall(unix.SYS_SCHED_SETSCHEDULER, 0, uintptr(policy), uintptr(unsafe.Pointer(&param)))
	if errno != 0 {
		return errno
	}
	return nil
}

// useHighestNice gives the calling thread nice -20 (on Linux, PRIO_PROCESS
// with who 0 is the calling thread) and returns what puts it back.
func useHighestNice(prio int, fifoErr error) (restore func()) {
	before, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err == nil {
		err = unix.Setpriority(unix.PRIO_PROCESS, 0, -20)
	}
	if err != nil {
		klog.Warningf("real-time priority %d for the guard loop: %v; nice -20: %v (running at normal priority; it may lose races on a busy node)", prio, fifoErr, err)
		return func() {}
	}
	klog.Warningf("real-time priority %d for the guard loop: %v; running it at nice -20 instead", prio, fifoErr)
	// getpriority(2) returns 20 - nice.
	return func() { _ = unix.Setpriority(unix.PRIO_PROCESS, 0, 20-before) }
}

// ValidRealtimePriority checks a SCHED_FIFO priority (0 disables).
func ValidRealtimePriority(p int) error {
	if p < 0 || p > 99 {
		return fmt.Errorf("real-time priority %d outside 0..99", p)
	}
	return nil
}
