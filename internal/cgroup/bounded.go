package cgroup

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ErrBudget is returned when a bounded write was cut short by its budget.
var ErrBudget = errors.New("interrupted: time budget spent")

// WriteBounded writes data to a cgroup file and interrupts the write once
// budget has passed. Reclaim files (v1 memory.force_empty, v2
// memory.reclaim) keep the writer in the kernel for as long as reclaim makes
// progress, but they check for pending signals in their loop and then
// return EINTR: so after the budget the writing thread is sent SIGURG, a
// signal the Go runtime already uses for preemption and ignores otherwise,
// until the write returns. The write is a raw write(2): os.File would retry
// on EINTR and defeat the bound.
func (fs *FS) WriteBounded(rel, file, data string, budget time.Duration) error {
	f, err := fs.open(rel, file, unix.O_WRONLY)
	if err != nil {
		return err
	}
	defer f.Close()

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	pid, tid := os.Getpid(), unix.Gettid()
	var mu sync.Mutex
	done := false
	var interrupt func()
	interrupt = func() {
		mu.Lock()
		defer mu.Unlock()
		if done {
			return
		}
		_ = unix.Tgkill(pid, tid, unix.SIGURG)
		// The signal may land before the thread enters the kernel; keep
		// knocking until the write returns.
		time.AfterFunc(time.Millisecond, interrupt)
	}
	timer := time.AfterFunc(budget, interrupt)
	_, werr := unix.Write(int(f.Fd()), []byte(data))
	mu.Lock()
	done = true
	mu.Unlock()
	timer.Stop()
	switch {
	case werr == unix.EINTR:
		return fmt.Errorf("write %s after %v: %w", f.Name(), budget, ErrBudget)
	case werr != nil:
		return fmt.Errorf("write %q to %s: %w", data, f.Name(), werr)
	}
	return nil
}
