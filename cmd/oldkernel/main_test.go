package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/kernel"
)

// probeEnv makes the test binary, run under the helper, report what the
// old surface lets through instead of running tests.
const probeEnv = "OLDKERNEL_TEST_PROBE"

func TestMain(m *testing.M) {
	if os.Getenv(probeEnv) == "1" {
		probe()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// probe prints, one per line, "name errno" for each call tried.
func probe() {
	show := func(name string, err error) {
		if err == nil {
			fmt.Printf("%s ok\n", name)
		} else {
			fmt.Printf("%s %s\n", name, unix.ErrnoName(err.(unix.Errno)))
		}
	}
	fd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err == nil {
		unix.Close(fd)
	}
	show("pidfd_open", err)
	show("pidfd_send_signal", unix.PidfdSendSignal(-1, 0, nil, 0))
	_, _, e := unix.Syscall(unix.SYS_PROCESS_MRELEASE, ^uintptr(0), 0, 0)
	show("process_mrelease", errnoOrNil(e))
	fd, err = unix.Openat2(unix.AT_FDCWD, "/", &unix.OpenHow{Flags: unix.O_PATH})
	if err == nil {
		unix.Close(fd)
	}
	show("openat2", err)
	var b [8]byte
	_, err = unix.Getrandom(b[:], 0)
	show("getrandom", err)
	show("kill", unix.Kill(os.Getpid(), 0))
	_, _, e = unix.Syscall(unix.SYS_GETPID, 0, 0, 0)
	show("getpid", errnoOrNil(e))
	// The Go runtime and os/exec cope: a child starts and is waited for.
	show("exec", errnoOf(exec.Command("/bin/true").Run()))
	fmt.Printf("hide %s\n", os.Getenv(kernel.HideEnv))
	fmt.Printf("has pidfd=%v mrelease=%v openat2=%v nspid=%v\n", kernel.HasPidfd(), kernel.HasProcessMrelease(), kernel.HasOpenat2(), kernel.HasNSpid())
}

func errnoOrNil(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func errnoOf(err error) error {
	if err == nil {
		return nil
	}
	return unix.EIO
}

func TestOldSurface(t *testing.T) {
	if os.Getenv("OOMGUARD_OLDKERNEL") != "" {
		t.Skip("already under the old surface")
	}
	bin := filepath.Join(t.TempDir(), "oldkernel")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		kernel string
		want   map[string]string
	}{
		{"3.10", map[string]string{"pidfd_open": "ENOSYS", "pidfd_send_signal": "ENOSYS", "process_mrelease": "ENOSYS",
			"openat2": "ENOSYS", "getrandom": "ENOSYS", "kill": "ok", "getpid": "ok", "exec": "ok",
			"hide": "nspid,oom_kill,cgroup.kill,oom_wait", "has": "pidfd=false mrelease=false openat2=false nspid=false"}},
		{"4.14", map[string]string{"pidfd_open": "ENOSYS", "process_mrelease": "ENOSYS", "openat2": "ENOSYS",
			"getrandom": "ok", "kill": "ok", "exec": "ok", "has": "pidfd=false mrelease=false openat2=false nspid=true"}},
		{"4.20", map[string]string{"pidfd_open": "ENOSYS", "pidfd_send_signal": "ENOSYS", "process_mrelease": "ENOSYS",
			"openat2": "ENOSYS", "getrandom": "ok", "kill": "ok", "exec": "ok"}},
	} {
		t.Run(tc.kernel, func(t *testing.T) {
			cmd := exec.Command(bin, "-kernel", tc.kernel, self)
			cmd.Env = append(os.Environ(), probeEnv+"=1")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			got := map[string]string{}
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				k, v, _ := strings.Cut(line, " ")
				got[k] = v
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s: %q, want %q (all: %q)", k, got[k], v, out)
				}
			}
		})
	}
	// Outside the helper the same calls work.
	if !kernel.HasPidfd() || !kernel.HasOpenat2() {
		t.Errorf("this kernel (%s) should have pidfd and openat2", kernel.Release())
	}
}

func TestFilterShape(t *testing.T) {
	f := filter(424)
	if len(f) != 7 || f[4].K != 424 || f[6].K != unix.SECCOMP_RET_ERRNO|uint32(unix.ENOSYS) || f[2].K != unix.SECCOMP_RET_KILL_PROCESS {
		t.Fatalf("filter %+v", f)
	}
}
