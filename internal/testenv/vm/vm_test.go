package vm_test

import (
	"errors"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/testenv/vm"
)

// The harness tests itself end to end: host tests below boot VMs that run
// the TestGuest* tests of this same package, some of which fail, skip,
// panic the kernel or hang on purpose. Those only act when the host test
// asks (envSelfTest), so neither a plain go test on the host nor a VM run
// by another test ever trips them.
const envSelfTest = "OOMGUARD_VM_SELFTEST"

func selfTest(t *testing.T, want string) {
	t.Helper()
	vm.GuestOnly(t)
	if os.Getenv(envSelfTest) != want {
		t.Skip("part of the harness's self-test " + want)
	}
}

// One boot, every kind of result: pass with output and subtests, fail,
// skip, a file sent back, the guest's environment.
func TestRunReportsEachResult(t *testing.T) {
	res, err := vm.Boot(t, ".", vm.Options{Run: "^TestGuest(Env|Fail|Skip|Subtests)$", Env: []string{envSelfTest + "=results"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res.Timing())
	want := map[string]string{
		"TestGuestEnv": "pass", "TestGuestFail": "fail", "TestGuestSkip": "skip",
		"TestGuestSubtests": "fail", "TestGuestSubtests/ok": "pass", "TestGuestSubtests/bad": "fail",
		"TestGuestSubtests/with/slash": "pass",
	}
	got := map[string]*vm.Test{}
	var walk func([]*vm.Test)
	walk = func(ts []*vm.Test) {
		for _, vt := range ts {
			got[vt.Name] = vt
			walk(vt.Subtests)
		}
	}
	walk(res.Tests)
	for name, result := range want {
		if vt := got[name]; vt == nil || vt.Result != result {
			t.Errorf("%s: got %+v, want %s", name, vt, result)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got tests %v, want %v", keys(got), want)
	}
	if len(res.Tests) != 4 || len(got["TestGuestSubtests"].Subtests) != 3 {
		t.Errorf("tree: %d top-level tests, %d subtests", len(res.Tests), len(got["TestGuestSubtests"].Subtests))
	}
	if out := got["TestGuestFail"].Output; !strings.Contains(out, "deliberate failure") || strings.Contains(out, "--- FAIL") {
		t.Errorf("failing test's output %q: want its message without the framing", out)
	}
	if out := got["TestGuestSkip"].Output; !strings.Contains(out, "deliberate skip") {
		t.Errorf("skipped test's output %q", out)
	}
	if string(res.Files["env.txt"]) != "hello from the VM\n" {
		t.Errorf("files back from the VM: %q", res.Files)
	}
	if res.Exit != "1" {
		t.Errorf("exit status %q, want 1", res.Exit)
	}
	if e := got["TestGuestEnv"].Elapsed; e < 20*time.Millisecond || e > 10*time.Second {
		t.Errorf("TestGuestEnv took %v in the VM; it sleeps 30 ms", e)
	}
	if res.FirstTest <= 0 || res.InitAt <= 0 || res.StartedAt < res.InitAt || res.ExitAt < res.StartedAt {
		t.Errorf("timings: %s", res.Timing())
	}
}

// A kernel panic in the VM ends QEMU at once and is an error that shows
// the console; the test that caused it did not finish.
func TestRunKernelPanicIsAnError(t *testing.T) {
	res, err := vm.Boot(t, ".", vm.Options{Run: "^TestGuestPanicKernel$", Env: []string{envSelfTest + "=panic"}})
	if err == nil {
		t.Fatal("no error for a kernel panic")
	}
	if !strings.Contains(err.Error(), "Kernel panic") || !strings.Contains(err.Error(), "crash") {
		t.Errorf("error does not show the panic: %v", err)
	}
	if res == nil || len(res.Tests) != 1 || res.Tests[0].Result != "" {
		t.Fatalf("want one unfinished test, got %+v", res)
	}
	if res.Boot > 30*time.Second {
		t.Errorf("QEMU took %v to notice the panic", res.Boot)
	}
}

// A hung test ends with the test binary's own timeout, which names the
// test and dumps the goroutines, well before /init or the host step in.
func TestRunHungTestTimesOut(t *testing.T) {
	// A later -test.timeout overrides the harness's, which is minutes.
	res, err := vm.Boot(t, ".", vm.Options{Run: "^TestGuestHang$", Env: []string{envSelfTest + "=hang"}, Args: []string{"-test.timeout=2s"}})
	if err != nil {
		t.Fatal(err)
	}
	// test2json gives a test that a panic ended no result: Report fails it
	// as unfinished.
	if len(res.Tests) != 1 || res.Tests[0].Result != "" {
		t.Fatalf("want TestGuestHang unfinished, got %+v", res.Tests)
	}
	if res.Exit != "2" {
		t.Errorf("exit status %q, want 2 (a panic)", res.Exit)
	}
	if out := res.Tests[0].Output + res.Output; !strings.Contains(out, "test timed out") || !strings.Contains(out, "TestGuestHang") {
		t.Errorf("output does not show the timeout: %q", out)
	}
}

// DiskMiB puts /tmp on ext4 on a virtual disk: files written there are
// page cache, which the kernel can reclaim, unlike the initramfs's tmpfs.
func TestRunWithDisk(t *testing.T) {
	vm.Run(t, ".", vm.Options{Run: "^TestGuestDisk$", Env: []string{envSelfTest + "=disk"}, DiskMiB: 64})
}

func TestGuestDisk(t *testing.T) {
	selfTest(t, "disk")
	var st unix.Statfs_t
	if err := unix.Statfs(os.TempDir(), &st); err != nil || st.Type != unix.EXT4_SUPER_MAGIC {
		t.Fatalf("%s: type %x, %v; want ext4", os.TempDir(), st.Type, err)
	}
	before := fileBytes(t)
	if err := os.WriteFile(filepath.Join(t.TempDir(), "data"), make([]byte, 16<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if after := fileBytes(t); after < before+12<<20 {
		t.Fatalf("page cache %d -> %d bytes after writing 16 MiB", before, after)
	}
}

// fileBytes is the kernel's file-backed LRU pages: page cache it can
// reclaim (tmpfs pages are on the anonymous LRU instead).
func fileBytes(t *testing.T) uint64 {
	t.Helper()
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	var total uint64
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && (f[0] == "Active(file):" || f[0] == "Inactive(file):") {
			kb, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				t.Fatalf("/proc/meminfo: %q: %v", line, err)
			}
			total += kb << 10
		}
	}
	return total
}

func TestRunNothingMatchedIsAnError(t *testing.T) {
	_, err := vm.Boot(t, ".", vm.Options{Run: "^TestNoSuchTest$"})
	if err == nil || !strings.Contains(err.Error(), "no test matched") {
		t.Fatalf("want a no-test error, got %v", err)
	}
}

func TestGuestEnv(t *testing.T) {
	selfTest(t, "results")
	if os.Getenv("OOMGUARD_VM") != "1" || os.Getpid() == 1 {
		t.Fatalf("OOMGUARD_VM=%q pid %d", os.Getenv("OOMGUARD_VM"), os.Getpid())
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		t.Fatalf("/sys/fs/cgroup: type %x, %v; want cgroup2", st.Type, err)
	}
	ctl, err := os.ReadFile("/sys/fs/cgroup/cgroup.subtree_control")
	if err != nil || !strings.Contains(string(ctl), "memory") {
		t.Fatalf("cgroup.subtree_control %q, %v", ctl, err)
	}
	// The package's testdata is copied in, beside the working directory.
	if _, err := os.Stat(filepath.Join("testdata", "guest.txt")); err != nil {
		t.Fatalf("testdata: %v", err)
	}
	if err := os.WriteFile(filepath.Join(vm.OutDir(), "env.txt"), []byte("hello from the VM\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Log("a line of output")
	time.Sleep(30 * time.Millisecond) // for Elapsed
}

func TestGuestFail(t *testing.T) {
	selfTest(t, "results")
	t.Error("deliberate failure")
}

func TestGuestSkip(t *testing.T) {
	selfTest(t, "results")
	t.Skip("deliberate skip")
}

func TestGuestSubtests(t *testing.T) {
	selfTest(t, "results")
	t.Run("ok", func(t *testing.T) {})
	t.Run("bad", func(t *testing.T) { t.Error("deliberate subtest failure") })
	t.Run("with/slash", func(t *testing.T) {})
}

func TestGuestPanicKernel(t *testing.T) {
	selfTest(t, "panic")
	if err := os.WriteFile("/proc/sysrq-trigger", []byte("c"), 0); err != nil {
		t.Fatal(errors.Join(errors.New("sysrq crash"), err))
	}
	time.Sleep(time.Minute)
}

func TestGuestIgnoreQuit(t *testing.T) {
	selfTest(t, "ignore-quit")
	signal.Ignore(syscall.SIGQUIT)
	time.Sleep(time.Hour)
}

func TestGuestHang(t *testing.T) {
	selfTest(t, "hang")
	time.Sleep(time.Hour)
}

func keys(m map[string]*vm.Test) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	return k
}

// Shares and Net: a host directory read-only in the guest, and the host's
// loopback reached at vm.HostIP over the user-mode network (and a
// hostfwd rule the other way).
func TestRunWithShareAndNet(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "shared.txt"), []byte("from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("hello over slirp\n"))
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	vm.Run(t, ".", vm.Options{
		Run:    "^TestGuestShareAndNet$",
		Env:    []string{envSelfTest + "=share", "SELFTEST_PORT=" + strconv.Itoa(port)},
		Shares: []vm.Share{{HostPath: dir, GuestPath: "/host/shared"}},
		Net:    &vm.Net{},
	})
}

func TestGuestShareAndNet(t *testing.T) {
	selfTest(t, "share")
	b, err := os.ReadFile("/host/shared/shared.txt")
	if err != nil || string(b) != "from the host\n" {
		t.Fatalf("shared file: %q, %v", b, err)
	}
	if err := os.WriteFile("/host/shared/new", nil, 0o644); err == nil {
		t.Error("the share is writable")
	}
	c, err := net.DialTimeout("tcp", net.JoinHostPort(vm.HostIP, os.Getenv("SELFTEST_PORT")), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, err = io.ReadAll(c)
	if err != nil || string(b) != "hello over slirp\n" {
		t.Fatalf("from the host: %q, %v", b, err)
	}
}
