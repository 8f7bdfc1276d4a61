// Command oldkernel runs a program with the system-call surface of an old
// kernel: a seccomp filter answers ENOSYS to every x86_64 system call
// that kernel did not have, as the old kernel itself would, and the
// test-only switch OOMGUARD_HIDE_FEATURES hides the lines of kernel files
// the old kernel did not write (see internal/kernel). It is how the
// guard's real-kernel tests run a second time "on" CentOS 7's 3.10 or a
// 4.x kernel:
//
//	go test -exec "$PWD/bin/oldkernel -kernel 3.10" ./internal/guard/
//	bin/oldkernel -kernel 4.14 -- bin/oom-guard --policy=process ...
//
// The filter is installed on the calling thread (locked to it), after
// PR_SET_NO_NEW_PRIVS, and the program is then exec'd from that thread:
// after execve only that thread remains, and it carries the filter, which
// every thread and child process of the program inherits. It cannot be
// removed. Test tooling only: never part of the guard's image.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/kernel"
)

// A surface is an old kernel's: the first x86_64 system call number it
// lacks (x86_64 numbers are handed out in order, so everything from there
// up is newer), and the kernel-file features it lacks.
type surface struct {
	firstMissing uint32
	hide         []string
	note         string
}

var surfaces = map[string]surface{
	// 3.10's last call is finit_module (313, 3.8); sched_setattr (314)
	// came in 3.14, getrandom (318) and memfd_create (319) in 3.17, statx
	// (332) in 4.11. NSpid came in 4.1, memory.oom_control's oom_kill in 4.13;
	// the OOM wait outside a task's locks (a hold's premise) in 3.12.
	"3.10": {314, []string{kernel.NSpid, kernel.OOMKillCounter, kernel.CgroupKill, kernel.OOMWait}, "CentOS 7"},
	// 4.14's last call is statx (332); io_pgetevents (333) and rseq (334)
	// came in 4.18. It has NSpid and the oom_kill counter.
	"4.14": {333, []string{kernel.CgroupKill}, "Amazon Linux 2, TencentOS"},
	// Every 4.x: 4.20's last call is rseq (334); 335-423 were never used on
	// x86_64, and 424 (pidfd_send_signal, 5.1) starts the numbers shared
	// by all architectures: pidfd_open 434 (5.3), clone3 435, close_range
	// 436, openat2 437 (5.6), faccessat2 439, process_mrelease 448 (5.15),
	// and on.
	"4.20": {424, []string{kernel.CgroupKill}, "any 4.x"},
}

func main() {
	fs := flag.NewFlagSet("oldkernel", flag.ContinueOnError)
	release := fs.String("kernel", "3.10", "the old kernel whose surface to show: "+strings.Join(names(), ", "))
	hide := fs.String("hide", "", "further features to hide (comma-separated), beyond the kernel's own")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: oldkernel [-kernel R] [-hide F,...] [--] program [args...]\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	s, ok := surfaces[*release]
	if !ok || fs.NArg() == 0 {
		fs.Usage()
		os.Exit(2)
	}
	prog, err := exec.LookPath(fs.Arg(0))
	if err != nil {
		fmt.Fprintf(os.Stderr, "oldkernel: %v\n", err)
		os.Exit(127)
	}
	hidden := append(append([]string(nil), s.hide...), splitList(*hide)...)
	if old := os.Getenv(kernel.HideEnv); old != "" {
		hidden = append(hidden, splitList(old)...)
	}
	env := append(os.Environ(), kernel.HideEnv+"="+strings.Join(hidden, ","), "OOMGUARD_OLDKERNEL="+*release)

	runtime.LockOSThread()
	if err := install(s.firstMissing); err != nil {
		fmt.Fprintf(os.Stderr, "oldkernel: %v\n", err)
		os.Exit(1)
	}
	err = syscall.Exec(prog, fs.Args(), env)
	fmt.Fprintf(os.Stderr, "oldkernel: exec %s: %v\n", prog, err)
	os.Exit(127)
}

func names() []string {
	var n []string
	for k := range surfaces {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// Offsets in struct seccomp_data.
const (
	offNr   = 0
	offArch = 4
)

// filter is the BPF program: a call from any other architecture (a 32-bit
// int 0x80 call from this 64-bit process, numbered differently) kills the
// process; a call numbered firstMissing or above answers ENOSYS. x32 calls
// carry bit 30 (__X32_SYSCALL_BIT) in their number, so they are all above
// the cut and answer ENOSYS too, as on a kernel built without x32.
func filter(firstMissing uint32) []unix.SockFilter {
	stmt := func(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }
	jump := func(code uint16, k uint32, jt, jf uint8) unix.SockFilter {
		return unix.SockFilter{Code: code, Jt: jt, Jf: jf, K: k}
	}
	return []unix.SockFilter{
		stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, offArch),
		jump(unix.BPF_JMP|unix.BPF_JEQ|unix.BPF_K, unix.AUDIT_ARCH_X86_64, 1, 0),
		stmt(unix.BPF_RET|unix.BPF_K, unix.SECCOMP_RET_KILL_PROCESS),
		stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, offNr),
		jump(unix.BPF_JMP|unix.BPF_JGE|unix.BPF_K, firstMissing, 1, 0),
		stmt(unix.BPF_RET|unix.BPF_K, unix.SECCOMP_RET_ALLOW),
		stmt(unix.BPF_RET|unix.BPF_K, unix.SECCOMP_RET_ERRNO|uint32(unix.ENOSYS)),
	}
}

// install sets no_new_privs (required for an unprivileged filter, and so
// that nothing exec'd gains privileges the filter did not see) and the
// filter, on the calling thread.
func install(firstMissing uint32) error {
	if runtime.GOARCH != "amd64" {
		return fmt.Errorf("the old-kernel surface is x86_64's system call table; this is %s", runtime.GOARCH)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_NO_NEW_PRIVS): %w", err)
	}
	f := filter(firstMissing)
	prog := unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]}
	if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&prog)), 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_SECCOMP): %w", err)
	}
	runtime.KeepAlive(f)
	return nil
}
