package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/notify"
	"github.com/oom-guard/oom-guard/internal/testenv"
)

// lagRow measures how late cgroup v1 signals a usage threshold: n cgroups
// of 64 MiB, a threshold each where the seed's margin puts it (62.72 MiB),
// one process growing in each, all released at once and never killed by
// anyone but the kernel at the limit. A listener on a real-time thread
// reads each cgroup's usage the moment its eventfd fires; how far past the
// threshold that usage is, is what the guard's v1 margins must leave
// room for (notify.V1ThresholdLag) on top of the guard's own reaction.
func lagRow(h hierarchy, top string, n int, out io.Writer) error {
	const limit, threshold = 64 << 20, 64<<20 - 1342177
	base := top + "/lag"
	if err := h.mkdir(base); err != nil {
		return err
	}
	defer removeTree(h.mount, base)
	p, err := notify.NewPoller()
	if err != nil {
		return err
	}
	defer p.Close()
	usageFds := map[int]int{} // eventfd -> the cgroup's memory.usage_in_bytes
	var hogs []*exec.Cmd
	var gates []*os.File
	defer func() {
		killAll(hogs)
		for efd, ufd := range usageFds {
			unix.Close(efd)
			unix.Close(ufd)
		}
	}()
	for i := 0; i < n; i++ {
		rel := fmt.Sprintf("%s/l%03d", base, i)
		if err := h.mkLimited(rel, limit); err != nil {
			return err
		}
		ev, err := notify.V1Threshold(h.mount, rel, threshold)
		if err != nil {
			return err
		}
		ufd, err := unix.Open(h.mount.Path(rel, "memory.usage_in_bytes"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ev.Close()
			return err
		}
		usageFds[ev.Fd()] = ufd
		if err := p.Add(ev.Fd()); err != nil {
			return err
		}
		c, gate, err := gatedHog(h, rel)
		if err != nil {
			return err
		}
		hogs, gates = append(hogs, c), append(gates, gate)
	}
	past, err := listen(p, usageFds, gates, threshold)
	if err != nil {
		return err
	}
	sort.Slice(past, func(i, j int) bool { return past[i] < past[j] })
	at := func(q float64) string {
		if len(past) == 0 {
			return "-"
		}
		return fmt.Sprintf("%d KiB", past[int(q*float64(len(past)-1))]>>10)
	}
	fmt.Fprintf(out, "\nThreshold notification lag on cgroup %s (%s): %d cgroups of 64 MiB, one process growing in each, released at once; a real-time listener reads usage when the threshold's eventfd fires (load average %s)\n\n",
		h.version, kernelRelease(), n, loadAvg())
	fmt.Fprintln(out, "| cgroups signalled | usage past the threshold p50 | p99 | max | the guard's allowance (notify.V1ThresholdLag, 2 CPUs) |")
	fmt.Fprintln(out, "|---|---|---|---|---|")
	fmt.Fprintf(out, "| %d of %d | %s | %s | %s | %d KiB |\n", len(past), n, at(0.5), at(0.99), at(1), notify.V1ThresholdLag(2)>>10)
	return nil
}

// killAll kills and reaps the workloads a row started.
func killAll(hogs []*exec.Cmd) {
	for _, c := range hogs {
		_ = c.Process.Kill()
		_ = c.Wait()
	}
}

// gatedHog starts a process growing without end in rel, held until its
// gate is written to.
func gatedHog(h hierarchy, rel string) (*exec.Cmd, *os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	c := testenv.HogCommand(testenv.HogSpec{MiB: 0})
	c.ExtraFiles = []*os.File{r}
	err = c.Start()
	r.Close()
	if err != nil {
		w.Close()
		return nil, nil, err
	}
	if err := h.mount.AddProc(rel, c.Process.Pid); err != nil {
		_ = c.Process.Kill()
		_ = c.Wait()
		w.Close()
		return nil, nil, err
	}
	return c, w, nil
}

// listen opens the gates, then, on a SCHED_FIFO thread, records for each
// eventfd the usage past threshold at its first signal, for up to 10 s.
func listen(p *notify.Poller, usageFds map[int]int, gates []*os.File, threshold uint64) ([]uint64, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	param := struct{ priority int32 }{2} // as the guard's loop: above its other threads
	if _, _, errno := unix.Syscall(unix.SYS_SCHED_SETSCHEDULER, 0, unix.SCHED_FIFO, uintptr(unsafe.Pointer(&param))); errno != 0 {
		return nil, fmt.Errorf("SCHED_FIFO for the listener: %w", errno)
	}
	defer func() {
		param.priority = 0 // back to the process's SCHED_RR would need its priority: normal is safe
		_, _, _ = unix.Syscall(unix.SYS_SCHED_SETSCHEDULER, 0, unix.SCHED_NORMAL, uintptr(unsafe.Pointer(&param)))
	}()
	for _, g := range gates {
		_, _ = g.Write([]byte{1})
		g.Close()
	}
	seen := map[int]bool{}
	var past []uint64
	var buf [32]byte
	for end := time.Now().Add(10 * time.Second); len(seen) < len(usageFds) && time.Now().Before(end); {
		ready, _, err := p.Wait(100 * time.Millisecond)
		if err != nil {
			return nil, err
		}
		for _, efd := range ready {
			_, _ = unix.Read(efd, buf[:8])
			n, err := unix.Pread(usageFds[efd], buf[:], 0)
			if err != nil || seen[efd] {
				continue
			}
			var usage uint64
			for _, ch := range buf[:n] {
				if ch >= '0' && ch <= '9' {
					usage = usage*10 + uint64(ch-'0')
				}
			}
			if usage >= threshold { // not the signal of a crossing back down
				seen[efd] = true
				past = append(past, usage-threshold)
			}
		}
	}
	return past, nil
}
