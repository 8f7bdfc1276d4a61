package vm

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/testenv/vm/proto"
)

// Result is what came back from one VM.
type Result struct {
	Package string // import path of the tested package
	Kernel  string // guest kernel release, e.g. 6.1.0-56-amd64

	// Tests are the top-level tests that started in the VM, in the order
	// they started; subtests hang below them.
	Tests []*Test
	// Output is the test binary's output outside any test (PASS, FAIL, a
	// panic in TestMain, exit status lines).
	Output string
	// Exit is the test binary's exit status as /init reported it ("0",
	// "1", "signal:SIGKILL"), or "" if the VM ended before it exited.
	Exit string
	// InitError is the error /init reported, if any.
	InitError string
	// Files are the regular files the tests left in OutDir(), by name.
	Files map[string][]byte
	// Console is the kernel console (ttyS0), kept whole.
	Console []byte

	// Timings. Build: from the call to the initramfs being ready.
	// Boot: QEMU's whole run. FirstTest: from QEMU's start to the first
	// test starting. InitAt, StartedAt, ExitAt: guest uptime when /init
	// started, when it started the binary, and when the binary exited.
	// Total: the whole call.
	Build, Boot, FirstTest, Total time.Duration
	InitAt, StartedAt, ExitAt     time.Duration

	byName map[string]*Test
}

// Test is one test or subtest that ran in the VM.
type Test struct {
	Name     string // full name, e.g. TestV2/limit
	Result   string // "pass", "fail", "skip", or "" if it never finished
	Output   string // its output, without the === and --- framing lines
	Elapsed  time.Duration
	Subtests []*Test
}

// add applies one test2json event.
func (r *Result) add(ev event) {
	if r.byName == nil {
		r.byName = map[string]*Test{}
	}
	if ev.Test == "" {
		if ev.Action == "output" {
			r.Output += ev.Output
		}
		return
	}
	t := r.byName[ev.Test]
	if t == nil {
		t = &Test{Name: ev.Test}
		r.byName[ev.Test] = t
		if parent := r.parentOf(ev.Test); parent != nil {
			parent.Subtests = append(parent.Subtests, t)
		} else {
			r.Tests = append(r.Tests, t)
		}
	}
	switch ev.Action {
	case "output":
		if !isFraming(ev.Output) {
			t.Output += ev.Output
		}
	case "pass", "fail", "skip":
		t.Result = ev.Action
		t.Elapsed = time.Duration(ev.Elapsed * float64(time.Second))
	}
}

// parentOf finds the test that name is a subtest of. A subtest's own name
// may contain '/', so the longest known prefix wins.
func (r *Result) parentOf(name string) *Test {
	for i := strings.LastIndexByte(name, '/'); i > 0; i = strings.LastIndexByte(name[:i], '/') {
		if p := r.byName[name[:i]]; p != nil {
			return p
		}
	}
	return nil
}

// isFraming tells the lines the testing package writes around a test's
// output (=== RUN, --- PASS: and the like) from the output itself; the host
// subtest says the same thing by passing, failing or skipping.
func isFraming(line string) bool {
	s := strings.TrimLeft(line, " ")
	for _, p := range []string{"=== RUN ", "=== PAUSE ", "=== CONT ", "=== NAME ", "--- PASS: ", "--- FAIL: ", "--- SKIP: "} {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// parseControl reads /init's control lines. A truncated last line (the VM
// died mid-write) is ignored.
func (r *Result) parseControl(data []byte) {
	for _, line := range strings.Split(string(data), "\n") {
		kind, rest, _ := strings.Cut(strings.TrimRight(line, "\r"), " ")
		f := strings.Fields(rest)
		switch {
		case kind == proto.Hello && len(f) == 1:
			r.InitAt, _ = proto.ParseSeconds(f[0])
		case kind == proto.Started && len(f) == 1:
			r.StartedAt, _ = proto.ParseSeconds(f[0])
		case kind == proto.Exit && len(f) == 2:
			r.Exit = f[0]
			r.ExitAt, _ = proto.ParseSeconds(f[1])
		case kind == proto.Error:
			r.InitError = rest
		case kind == proto.File && len(f) == 2:
			data, err := base64.StdEncoding.DecodeString(f[1])
			if err != nil || strings.ContainsAny(f[0], "/\x00") {
				continue
			}
			if r.Files == nil {
				r.Files = map[string][]byte{}
			}
			r.Files[f[0]] = data
		}
	}
}

// check turns what came back into an error when the run as a whole went
// wrong, whatever the tests' own results.
func (r *Result) check(run string) error {
	switch {
	case r.InitError != "":
		return fmt.Errorf("/init failed: %s", r.InitError)
	case r.Exit == "":
		return fmt.Errorf("the VM ended before the test binary exited (kernel panic or crash?)")
	case len(r.Tests) == 0:
		return fmt.Errorf("no test matched -test.run=%q in the VM (exit status %s)", run, r.Exit)
	case r.Exit != "0" && !r.anyFailed():
		// A test that failed or never finished (a panic, -test.timeout:
		// test2json ends those without a result) explains a non-zero
		// status, and Report fails it; anything else (a TestMain that
		// exits 1, a crash after the tests) does not.
		return fmt.Errorf("test binary exited with status %s, though no test failed", r.Exit)
	}
	return nil
}

func (r *Result) anyFailed() bool {
	var walk func([]*Test) bool
	walk = func(ts []*Test) bool {
		for _, t := range ts {
			if t.Result == "fail" || t.Result == "" || walk(t.Subtests) {
				return true
			}
		}
		return false
	}
	return walk(r.Tests)
}

// diagnostics is appended to a run's error: the binary's own output and the
// kernel console's tail, the first places to look.
func (r *Result) diagnostics() string {
	var b strings.Builder
	if out := strings.TrimSpace(r.Output); out != "" {
		fmt.Fprintf(&b, "\ntest binary output outside tests:\n%s", tail(out, 40))
	}
	if con := strings.TrimSpace(string(r.Console)); con != "" {
		// A panic's cause comes before its stack trace, which can push it
		// out of the tail: name it first.
		for _, line := range strings.Split(con, "\n") {
			for _, sign := range []string{"Kernel panic", "BUG:", "Oops:", "general protection fault"} {
				if strings.Contains(line, sign) {
					fmt.Fprintf(&b, "\nkernel: %s", strings.TrimSpace(line))
					break
				}
			}
		}
		fmt.Fprintf(&b, "\nkernel console (last lines):\n%s", tail(con, 40))
	} else {
		b.WriteString("\nkernel console: empty")
	}
	return b.String()
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[... %d lines before]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// Timing summarises where the time went. Guest times are the guest's
// uptime; QEMU's own start-up comes before it.
func (r *Result) Timing() string {
	return fmt.Sprintf("%s on %s: build %.1fs; QEMU ran %.1fs: /init at %.1fs, test binary at %.1fs (guest uptime), first test %.1fs after QEMU's start, binary ran %.1fs; total %.1fs",
		r.Package, r.Kernel, r.Build.Seconds(), r.Boot.Seconds(), r.InitAt.Seconds(), r.StartedAt.Seconds(),
		r.FirstTest.Seconds(), (r.ExitAt - r.StartedAt).Seconds(), r.Total.Seconds())
}

// Report replays the VM's tests as subtests of t with the same names: each
// passes, fails or skips as it did in the VM, and logs its VM output. A
// test that never finished (the VM crashed or timed out in it) fails.
func (r *Result) Report(t *testing.T) {
	t.Helper()
	for _, vt := range r.Tests {
		report(t, vt, "")
	}
}

func report(t *testing.T, vt *Test, parent string) {
	name := strings.TrimPrefix(vt.Name, parent+"/")
	if parent == "" {
		name = vt.Name
	}
	t.Run(name, func(t *testing.T) {
		for _, sub := range vt.Subtests {
			report(t, sub, vt.Name)
		}
		if out := strings.TrimRight(vt.Output, "\n"); out != "" {
			t.Logf("in the VM (%.2fs):\n%s", vt.Elapsed.Seconds(), out)
		}
		switch vt.Result {
		case "pass":
		case "fail":
			t.Fail()
		case "skip":
			t.SkipNow()
		default:
			t.Error("did not finish in the VM")
		}
	})
}
