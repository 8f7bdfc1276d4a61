package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/cgroup"
)

// The hog is this same binary re-executed with these variables set: it waits
// for a byte on fd 3 (so the parent can move it into a cgroup first), then
// allocates and touches memory. Tests call RunHogIfRequested from TestMain.
const (
	envHog        = "OOMGUARD_HOG"         // "anon" or "file"
	envHogMiB     = "OOMGUARD_HOG_MIB"     // how much; 0 means until killed
	envHogThreads = "OOMGUARD_HOG_THREADS" // allocating threads
	envHogDir     = "OOMGUARD_HOG_DIR"     // for "file": where to write
	envHogHold    = "OOMGUARD_HOG_HOLD"    // "1": sleep after allocating
)

// HogSpec describes what the hog does.
type HogSpec struct {
	Kind    string // "anon" (default): private anonymous memory; "file": write page cache; "sleep": nothing
	MiB     int    // amount to allocate; 0: grow until killed
	Threads int    // allocating threads (default 1)
	Dir     string // directory for "file"
	Hold    bool   // after allocating MiB, sleep instead of exiting
}

// HogCommand returns the command that runs a hog from this binary.
func HogCommand(spec HogSpec) *exec.Cmd {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	cmd := exec.Command(exe)
	kind := spec.Kind
	if kind == "" {
		kind = "anon"
	}
	th := spec.Threads
	if th < 1 {
		th = 1
	}
	hold := "0"
	if spec.Hold {
		hold = "1"
	}
	cmd.Env = append(os.Environ(),
		envHog+"="+kind, envHogMiB+"="+strconv.Itoa(spec.MiB),
		envHogThreads+"="+strconv.Itoa(th), envHogDir+"="+spec.Dir, envHogHold+"="+hold)
	return cmd
}

// StartIn starts cmd so that it runs in cgroup rel from its first
// instruction: its fd 3 is a pipe the hog waits on; a non-hog command must
// not need that (it simply inherits an extra fd).
func StartIn(fs *cgroup.FS, rel string, cmd *exec.Cmd) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	defer w.Close()
	cmd.ExtraFiles = append(cmd.ExtraFiles, r)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	atNormalPriority(cmd.Process.Pid)
	if err := fs.AddProc(rel, cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return fmt.Errorf("move pid %d into %s: %w", cmd.Process.Pid, rel, err)
	}
	_, err = w.Write([]byte{1})
	return err
}

// atNormalPriority gives every thread of process pid normal scheduling at
// nice 0: workloads run as a node's do, whatever the priority of the
// process that started them (a benchmark that runs the guard in-process
// runs it as the binary does: SCHED_RR at nice -20, guard.RealtimeProcess
// and guard.NiceProcess).
func atNormalPriority(pid int) {
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		return
	}
	for _, task := range tasks {
		if tid, err := strconv.Atoi(task.Name()); err == nil {
			param := struct{ priority int32 }{0}
			_, _, _ = unix.Syscall(unix.SYS_SCHED_SETSCHEDULER, uintptr(tid), unix.SCHED_NORMAL, uintptr(unsafe.Pointer(&param)))
			_ = unix.Setpriority(unix.PRIO_PROCESS, tid, 0)
		}
	}
}

// RunHogIfRequested turns this process into a hog when the environment asks
// for one, and never returns in that case.
func RunHogIfRequested() {
	kind := os.Getenv(envHog)
	if kind == "" {
		return
	}
	atNormalPriority(os.Getpid())
	gate := os.NewFile(3, "gate")
	var b [1]byte
	if _, err := gate.Read(b[:]); err != nil {
		fmt.Fprintln(os.Stderr, "hog: gate:", err)
		os.Exit(3)
	}
	gate.Close()
	mib, _ := strconv.Atoi(os.Getenv(envHogMiB))
	threads, _ := strconv.Atoi(os.Getenv(envHogThreads))
	switch kind {
	case "anon":
		hogAnon(mib, threads)
	case "file":
		hogFile(os.Getenv(envHogDir), mib)
	case "sleep":
	}
	if os.Getenv(envHogHold) == "1" || kind == "sleep" {
		for {
			time.Sleep(time.Hour)
		}
	}
	os.Exit(0)
}

// hogAnon touches anonymous memory one page at a time from each thread, as
// fast as the CPU allows, in 8 MiB mappings (no Go heap, so no GC pauses).
func hogAnon(mib, threads int) {
	if threads < 1 {
		threads = 1
	}
	const chunk = 8 << 20
	var wg sync.WaitGroup
	per := mib / threads
	for i := 0; i < threads; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for done := 0; mib == 0 || done < per; done += chunk >> 20 {
				mem, err := unix.Mmap(-1, 0, chunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
				if err != nil {
					fmt.Fprintln(os.Stderr, "hog: mmap:", err)
					os.Exit(4)
				}
				for off := 0; off < chunk; off += 4096 {
					mem[off] = 1
				}
			}
		}()
	}
	wg.Wait()
}

// hogFile writes mib MiB to a file: page cache charged to the cgroup.
func hogFile(dir string, mib int) {
	f, err := os.CreateTemp(dir, "hog-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, "hog:", err)
		os.Exit(5)
	}
	defer os.Remove(f.Name())
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	for i := 0; i < mib; i++ {
		if _, err := f.Write(buf); err != nil {
			fmt.Fprintln(os.Stderr, "hog:", err)
			os.Exit(6)
		}
	}
	if os.Getenv(envHogHold) == "1" {
		for {
			time.Sleep(time.Hour)
		}
	}
}
