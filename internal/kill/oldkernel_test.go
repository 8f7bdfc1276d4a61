package kill

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// fixture reads a testdata file without its "#" header (which names the
// file's source).
func fixture(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if !bytes.HasPrefix(line, []byte("#")) {
			out = append(out, line)
		}
	}
	return bytes.Join(out, nil)
}

// 3.10 writes neither NSpid (4.1) nor RssAnon/RssFile/RssShmem (4.5): the
// pid in the namespace is unknown (0) and the score falls back on VmRSS,
// so that victims still rank by size as the kernel ranks them.
func TestParseStatus310(t *testing.T) {
	s, err := ParseStatus(bytes.NewReader(fixture(t, "testdata/proc/status-3.10")))
	if err != nil {
		t.Fatal(err)
	}
	want := Status{VmSizeKB: 2539052, VmRSSKB: 61240, VmPTEKB: 292}
	if s != want {
		t.Fatalf("got %+v, want %+v", s, want)
	}
	if s.RSSKB() != 61240 {
		t.Fatalf("RSSKB %d, want VmRSS 61240", s.RSSKB())
	}
	const limitKB = 64 << 10
	if got, want := Score(s, 0, limitKB), (61240+292)*1000/limitKB; got != want {
		t.Fatalf("score %d, want %d", got, want)
	}
	small := Status{VmRSSKB: 1000}
	if Score(small, 0, limitKB) >= Score(s, 0, limitKB) {
		t.Fatal("a smaller 3.10 process outranks a larger one")
	}
}

func TestParseStatus414(t *testing.T) {
	s, err := ParseStatus(bytes.NewReader(fixture(t, "testdata/proc/status-4.14")))
	if err != nil {
		t.Fatal(err)
	}
	want := Status{RssAnonKB: 196608, RssFileKB: 1024, VmSizeKB: 209920, VmRSSKB: 197632, VmPTEKB: 428, PidInNS: 7}
	if s != want {
		t.Fatalf("got %+v, want %+v", s, want)
	}
	if s.RSSKB() != 196608+1024 {
		t.Fatalf("RSSKB %d", s.RSSKB())
	}
}

// Without pidfds: a Target held by its /proc/PID descriptor kills the
// process it was opened for, and, once that process is reaped, kills
// nothing (ErrGone), whoever has its number by then.
func TestKillByPid(t *testing.T) {
	start := func() *exec.Cmd {
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	var p Proc
	cmd := start()
	c, err := p.Inspect(cmd.Process.Pid, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	tg, err := p.openByPid(c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tg.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil || cmd.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("not killed: %v", err)
	}
	if tg.procfd != -1 {
		t.Fatal("procfd left open")
	}

	// Reaped before the kill: nothing is signalled.
	cmd = start()
	c, err = p.Inspect(cmd.Process.Pid, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	tg, err = p.openByPid(c)
	if err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()
	if _, err := tg.Kill(); !errors.Is(err, ErrGone) {
		t.Fatalf("kill of a reaped process: %v, want ErrGone", err)
	}

	// A start time that is not the process's: refused at Open.
	cmd = start()
	c, err = p.Inspect(cmd.Process.Pid, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	c.StartTime++
	if _, err := p.openByPid(c); !errors.Is(err, ErrGone) {
		t.Fatalf("open with another start time: %v, want ErrGone", err)
	}
}

// FateOf tells a SIGKILLed process from one that exited, before and after
// it is reaped.
func TestFateOf(t *testing.T) {
	var p Proc
	for _, tc := range []struct {
		sig  syscall.Signal
		want Fate
	}{{syscall.SIGKILL, Killed}, {syscall.SIGTERM, Exited}} {
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		c, err := p.Inspect(cmd.Process.Pid, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if f := p.FateOf(c); f != Running {
			t.Fatalf("running process: fate %v", f)
		}
		_ = cmd.Process.Signal(tc.sig)
		// A zombie until waited for: its exit code tells.
		var f Fate
		for i := 0; i < 1000; i++ {
			if f = p.FateOf(c); f != Running {
				break
			}
			time.Sleep(time.Millisecond)
		}
		if f != tc.want {
			t.Errorf("%v: fate %v, want %v", tc.sig, f, tc.want)
		}
		_ = cmd.Wait()
		if f := p.FateOf(c); f != Vanished {
			t.Errorf("%v, reaped: fate %v, want Vanished", tc.sig, f)
		}
	}
}

// A process killed a moment ago reads as Dying until it is gone; one that
// exits of its own accord never does.
func TestInspectDying(t *testing.T) {
	var p Proc
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	c, err := p.Inspect(cmd.Process.Pid, 1<<20)
	if err != nil || c.Dying {
		t.Fatalf("running: %+v, %v", c, err)
	}
	if !AnyDying([]Candidate{{Pid: 5, Dying: true}}, 1) || AnyDying([]Candidate{{Pid: 5, Dying: true, OOMScoreAdj: OOMScoreAdjMin}}, 1) {
		t.Fatal("AnyDying")
	}
	// The zombie's status: SigPnd is gone, exit_code says SIGKILL.
	_ = cmd.Process.Kill()
	deadline := time.Now().Add(2 * time.Second)
	for {
		data, err := os.ReadFile(p.path(cmd.Process.Pid, "stat"))
		if err != nil {
			t.Fatal(err)
		}
		if killedExiting(data) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("killed, but stat %q does not say so", data)
		}
		time.Sleep(time.Millisecond)
	}
}
