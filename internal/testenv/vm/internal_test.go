package vm

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/testenv/vm/proto"
)

// cpioEntry is one entry read back by readCpio.
type cpioEntry struct {
	name         string
	mode         uint32
	rdev         [2]uint32
	data         []byte
	headerOffset int
}

// readCpio parses a newc archive the way the kernel does, checking the
// alignment the kernel relies on.
func readCpio(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	for off := 0; ; {
		if off%4 != 0 {
			t.Fatalf("entry at %d is not 4-aligned", off)
		}
		if len(b) < off+110 || string(b[off:off+6]) != "070701" {
			t.Fatalf("no newc header at %d", off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("header at %d, field %d: %v", off, i, err)
			}
			return uint32(v)
		}
		mode, size, namesize := field(1), int(field(6)), int(field(11))
		name := string(b[off+110 : off+110+namesize-1])
		if b[off+110+namesize-1] != 0 {
			t.Fatalf("%s: name not NUL-terminated", name)
		}
		data := off + 110 + namesize
		data += (4 - data%4) % 4
		e := cpioEntry{name: name, mode: mode, rdev: [2]uint32{field(9), field(10)}, data: b[data : data+size], headerOffset: off}
		off = data + size
		off += (4 - off%4) % 4
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		out = append(out, e)
	}
}

func TestCpioWriter(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, []byte("hello, VM"), 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w := newCpioWriter(&buf)
	w.Dir("/tmp", 0o777|os.ModeSticky)
	w.CharDev("/dev/console", 0o600, 5, 1)
	w.File("/bin/x", 0o755, src)
	w.Bytes("/a", 0o644, []byte("abc"))    // odd sizes exercise the padding
	w.Bytes("/ab", 0o644, []byte("abcde")) // of names and of data
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	want := []cpioEntry{
		{name: "tmp", mode: cpioDir | 0o1777},
		{name: "dev/console", mode: cpioChar | 0o600, rdev: [2]uint32{5, 1}},
		{name: "bin/x", mode: cpioReg | 0o755, data: []byte("hello, VM")},
		{name: "a", mode: cpioReg | 0o644, data: []byte("abc")},
		{name: "ab", mode: cpioReg | 0o644, data: []byte("abcde")},
	}
	got := readCpio(t, buf.Bytes())
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d", len(got), len(want))
	}
	for i, g := range got {
		w := want[i]
		if g.name != w.name || g.mode != w.mode || g.rdev != w.rdev || !bytes.Equal(g.data, w.data) {
			t.Errorf("entry %d: got %s %o %v %q, want %s %o %v %q", i, g.name, g.mode, g.rdev, g.data, w.name, w.mode, w.rdev, w.data)
		}
	}
}

func TestCpioWriterReportsMissingFile(t *testing.T) {
	w := newCpioWriter(&bytes.Buffer{})
	w.File("/x", 0o644, filepath.Join(t.TempDir(), "missing"))
	w.Bytes("/y", 0o644, []byte("later entries are no-ops"))
	if err := w.Close(); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("want an error naming the missing file, got %v", err)
	}
}

// Events as test2json writes them for a run with subtests, a failure and
// output outside any test.
func TestResultFromEvents(t *testing.T) {
	var r Result
	for _, ev := range []event{
		{Action: "start"},
		{Action: "run", Test: "TestA"},
		{Action: "output", Test: "TestA", Output: "=== RUN   TestA\n"},
		{Action: "run", Test: "TestA/x/y"}, // t.Run("x/y"): a '/' in a subtest's own name
		{Action: "output", Test: "TestA/x/y", Output: "=== RUN   TestA/x/y\n"},
		{Action: "output", Test: "TestA/x/y", Output: "    a_test.go:9: inner\n"},
		{Action: "output", Test: "TestA/x/y", Output: "    --- FAIL: TestA/x/y (0.00s)\n"},
		{Action: "fail", Test: "TestA/x/y", Elapsed: 0.25},
		{Action: "output", Test: "TestA", Output: "--- FAIL: TestA (0.50s)\n"},
		{Action: "fail", Test: "TestA", Elapsed: 0.5},
		{Action: "run", Test: "TestB"},
		{Action: "output", Test: "TestB", Output: "    b_test.go:3: not here\n"},
		{Action: "skip", Test: "TestB"},
		{Action: "output", Output: "FAIL\n"},
		{Action: "fail", Elapsed: 1},
	} {
		r.add(ev)
	}
	if len(r.Tests) != 2 || r.Tests[0].Name != "TestA" || r.Tests[1].Name != "TestB" {
		t.Fatalf("top-level tests %+v", r.Tests)
	}
	a := r.Tests[0]
	if len(a.Subtests) != 1 || a.Subtests[0].Name != "TestA/x/y" {
		t.Fatalf("TestA's subtests %+v", a.Subtests)
	}
	sub := a.Subtests[0]
	if sub.Result != "fail" || sub.Output != "    a_test.go:9: inner\n" || sub.Elapsed != 250*time.Millisecond {
		t.Errorf("subtest %+v", sub)
	}
	if a.Result != "fail" || a.Output != "" {
		t.Errorf("TestA %+v", a)
	}
	if b := r.Tests[1]; b.Result != "skip" || !strings.Contains(b.Output, "not here") {
		t.Errorf("TestB %+v", b)
	}
	if r.Output != "FAIL\n" {
		t.Errorf("package output %q", r.Output)
	}
}

func TestParseControl(t *testing.T) {
	var r Result
	r.parseControl([]byte(strings.Join([]string{
		"hello 1.250",
		"started 1.500",
		"file stat.txt " + base64.StdEncoding.EncodeToString([]byte("a 1\n")),
		"file ../escape " + base64.StdEncoding.EncodeToString([]byte("x")),
		"file bad !!!notbase64",
		"exit 1 3.000",
		"file trunc aGVsbG8", // the VM died mid-line: ignored
	}, "\n")))
	if r.InitAt != 1250*time.Millisecond || r.StartedAt != 1500*time.Millisecond || r.ExitAt != 3*time.Second || r.Exit != "1" {
		t.Errorf("got %+v", r)
	}
	if len(r.Files) != 1 || string(r.Files["stat.txt"]) != "a 1\n" {
		t.Errorf("files %q", r.Files)
	}
	var e Result
	e.parseControl([]byte("hello 1.0\nerror mount cgroup2 on /sys/fs/cgroup: no such device\n"))
	if e.InitError != "mount cgroup2 on /sys/fs/cgroup: no such device" {
		t.Errorf("init error %q", e.InitError)
	}
}

func TestCheck(t *testing.T) {
	pass := []*Test{{Name: "TestA", Result: "pass"}}
	for _, tc := range []struct {
		name string
		r    Result
		want string // substring of the error, "" for none
	}{
		{"ok", Result{Exit: "0", Tests: pass}, ""},
		{"failed test explains status 1", Result{Exit: "1", Tests: []*Test{{Name: "TestA", Result: "fail"}}}, ""},
		{"failed subtest", Result{Exit: "1", Tests: []*Test{{Name: "TestA", Result: "pass", Subtests: []*Test{{Name: "TestA/b", Result: "fail"}}}}}, ""},
		{"unfinished test explains a panic", Result{Exit: "2", Tests: []*Test{{Name: "TestA"}}}, ""},
		{"crash", Result{Tests: pass}, "before the test binary exited"},
		{"init error", Result{InitError: "boom"}, "/init failed: boom"},
		{"nothing ran", Result{Exit: "0"}, "no test matched"},
		{"status without a failure", Result{Exit: "1", Tests: pass}, "though no test failed"},
	} {
		err := tc.r.check("^TestA$")
		if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestIsFraming(t *testing.T) {
	for line, want := range map[string]bool{
		"=== RUN   TestA\n":                           true,
		"    --- PASS: TestA/b (0s)\n":                true,
		"=== NAME  TestA\n":                           true,
		"    a_test.go:3: --- PASS: is what I said\n": false,
		"--- PASSING\n":                               false,
	} {
		if isFraming(line) != want {
			t.Errorf("isFraming(%q) = %v", line, !want)
		}
	}
}

// The modules a virtual disk needs come out dependencies first, from the
// kernel scripts/vm-kernel unpacked.
func TestModuleOrder(t *testing.T) {
	h := requireHost(t)
	order, err := moduleOrder(h.kernel.modules, "virtio_pci", "virtio_blk", "crc32c_generic", "ext4")
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range order {
		pos[strings.TrimSuffix(filepath.Base(m), ".ko")] = i
	}
	for _, dep := range [][2]string{{"virtio", "virtio_pci"}, {"virtio_ring", "virtio_blk"}, {"jbd2", "ext4"}, {"mbcache", "ext4"}, {"crc16", "ext4"}} {
		before, after := pos[dep[0]], pos[dep[1]]
		if _, ok := pos[dep[0]]; !ok || before >= after {
			t.Errorf("%s must load before %s: order %v", dep[0], dep[1], order)
		}
	}
}

// /init's own deadline: a binary that ignores SIGQUIT (and has no
// -test.timeout) is killed, and the run still ends cleanly.
func TestInitKillsAtItsDeadline(t *testing.T) {
	h := requireHost(t)
	start := time.Now()
	res, err := h.run(mustWorkDir(t), ".", Options{
		Run: "^TestGuestIgnoreQuit$", Env: []string{"OOMGUARD_VM_SELFTEST=ignore-quit"}, Args: []string{"-test.timeout=0"},
	}.withDefaults(), start, start.Add(time.Minute), hooks{config: func(c *proto.Config) { c.Timeout = time.Nanosecond }}) // the floor: 1 s after the start
	if err != nil {
		t.Fatal(err)
	}
	if res.Exit != "signal:SIGKILL" || len(res.Tests) != 1 || res.Tests[0].Result != "" {
		t.Fatalf("exit %q, tests %+v; want SIGKILL and an unfinished test", res.Exit, res.Tests)
	}
	if !strings.Contains(string(res.Console), "SIGQUIT, then SIGKILL") {
		t.Errorf("console does not say why:\n%s", res.Console)
	}
}

// QEMU itself is killed at the deadline, and nothing of it is left.
func TestQEMUKilledAtDeadline(t *testing.T) {
	h := requireHost(t)
	work := mustWorkDir(t)
	start := time.Now()
	_, err := h.run(work, ".", Options{Run: "^TestGuestIgnoreQuit$"}.withDefaults(), start, start.Add(time.Minute), hooks{qemuTimeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("want a timeout, got %v", err)
	}
	if pids := processesUsing(work); len(pids) > 0 {
		t.Fatalf("processes still using %s: %v", work, pids)
	}
}

func mustWorkDir(t *testing.T) string {
	dir, err := workDir(t)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// processesUsing lists the processes whose command line mentions s.
func processesUsing(s string) []string {
	var pids []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil || e.Name() == fmt.Sprint(os.Getpid()) {
			continue
		}
		if cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil && bytes.Contains(cmd, []byte(s)) {
			pids = append(pids, e.Name()+": "+string(bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})))
		}
	}
	return pids
}

// A missing kernel is reported (by requireHost, as a skip, or a failure
// under CI=true) with what to run.
func TestMissingKernelSaysWhatToRun(t *testing.T) {
	t.Setenv(EnvKernel, filepath.Join(t.TempDir(), "no-such-vmlinux"))
	_, err := findKernel()
	if err == nil || !strings.Contains(err.Error(), "scripts/vm-kernel") {
		t.Fatalf("got %v", err)
	}
}

// The line that says why the kernel died is shown even when its stack
// trace is longer than the console tail.
func TestDiagnosticsNameThePanic(t *testing.T) {
	con := "[    1.0] sysrq: Trigger a crash\n[    1.1] Kernel panic - not syncing: sysrq triggered crash\n" +
		strings.Repeat("[    1.2]  ? some_function+0x1/0x2\n", 100)
	d := (&Result{Console: []byte(con)}).diagnostics()
	if !strings.Contains(d, "kernel: [    1.1] Kernel panic - not syncing: sysrq triggered crash") {
		t.Fatalf("diagnostics do not name the panic:\n%s", d)
	}
}
