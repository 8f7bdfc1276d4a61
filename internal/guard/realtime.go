package guard

import (
	"fmt"
	"os"
	"strconv"
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
func setScheduler(policy, prio int) error { return setSchedulerOf(0, policy, prio) }

// setSchedulerOf is setScheduler for thread tid (0: the calling thread).
func setSchedulerOf(tid, policy, prio int) error {
	param := struct{ priority int32 }{int32(prio)}
	_, _, errno := unix.Syscall(unix.SYS_SCHED_SETSCHEDULER, uintptr(tid), uintptr(policy), uintptr(unsafe.Pointer(&param)))
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

// NiceProcess gives every thread of this process nice n. On Linux a nice
// value is a thread's (setpriority with PRIO_PROCESS takes a thread id),
// and a new thread takes its creator's: set early, before the loop starts,
// it holds for every thread the Go runtime makes later.
//
// Why the whole process, and not just the real-time loop: the loop stops
// whenever the Go runtime stops the world (a garbage collection), and the
// world stops only once every thread running Go code has reached a safe
// point. A normal thread among a hundred allocating processes on two CPUs
// waits tens of milliseconds for its turn, and the loop with it: in a
// storm of 100 crossing cgroups, 17 to 55 were lost to the kernel, reaction
// p99 up to 94 ms; at nice -20, 0 to 2 lost, p99 under 0.7 ms
// (bench/preempt, storm row; RESULTS-races.md). A loop thread returning
// from a system call may also have to wait for another thread to hand it
// a Go processor. The guard's other work is small and bounded (events,
// metrics, the kernel log); nice -20 still yields to real-time tasks.
func NiceProcess(n int) error {
	err := eachThread(func(tid int) error { return unix.Setpriority(unix.PRIO_PROCESS, tid, n) })
	if err != nil {
		return fmt.Errorf("nice %d: %w", n, err)
	}
	return nil
}

// eachThread applies set to every thread of this process; one that ended
// meanwhile (ESRCH) is skipped.
func eachThread(set func(tid int) error) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, task := range tasks {
		tid, err := strconv.Atoi(task.Name())
		if err != nil {
			continue
		}
		if err := set(tid); err != nil && err != unix.ESRCH {
			return fmt.Errorf("thread %d: %w", tid, err)
		}
	}
	return nil
}

// RealtimeProcess puts every thread of this process under SCHED_RR at
// prio, which the threads the Go runtime starts later inherit; the loop
// then takes SCHED_FIFO at a higher priority (useRealtime), so none of
// them ever delays it. Nice -20 (NiceProcess) shortened the runtime's
// pauses but did not end them: a thread that a busy node's processes keep
// off its CPU still holds up a garbage collection's stop, or the hand-over
// of a Go processor the loop's thread needs back after a system call, for
// as long as they keep it off. Traced in bench/preempt's storm: the loop,
// woken by a crossing, ran 5 to 236 ms later. With every thread real-time,
// kernel kills fell to 0 in the storm and respawn rows (RESULTS-races.md,
// round three). The guard's threads do little (events, metrics, the kernel
// log) and the kernel's RT throttling bounds what a runaway could take;
// the guard starts no process, so none inherits the policy.
// Priority 0 puts them back to normal scheduling.
func RealtimeProcess(prio int) error {
	policy := unix.SCHED_RR
	if prio == 0 {
		policy = unix.SCHED_NORMAL
	}
	if err := eachThread(func(tid int) error { return setSchedulerOf(tid, policy, prio) }); err != nil {
		return fmt.Errorf("SCHED_RR %d: %w", prio, err)
	}
	return nil
}

// ValidNice checks a nice value.
func ValidNice(n int) error {
	if n < -20 || n > 19 {
		return fmt.Errorf("nice %d outside -20..19", n)
	}
	return nil
}
