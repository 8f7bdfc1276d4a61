package kmsg

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The fakes here stand in for /dev/kmsg only where the real device cannot
// be made to misbehave on demand: ring-buffer overruns (EPIPE), oversized
// records (EINVAL), garbage. The real device is exercised in kernel_test.go.

// fifo makes a FIFO and returns its path; the Reader opens it like the
// device (O_NONBLOCK, so without a writer yet), the test then writes to it.
func fifo(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kmsg")
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

type collector struct {
	mu     sync.Mutex
	kills  []Kill
	losses []Loss
	got    chan struct{}
}

func newCollector() *collector { return &collector{got: make(chan struct{}, 1024)} }

func (c *collector) config(path string) Config {
	return Config{
		Path: path,
		OnKill: func(k Kill) {
			c.mu.Lock()
			c.kills = append(c.kills, k)
			c.mu.Unlock()
			c.got <- struct{}{}
		},
		OnLoss: func(l Loss) {
			c.mu.Lock()
			c.losses = append(c.losses, l)
			c.mu.Unlock()
		},
	}
}

// wait waits for n kills in all.
func (c *collector) wait(t *testing.T, n int) []Kill {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		c.mu.Lock()
		if len(c.kills) >= n {
			out := append([]Kill(nil), c.kills...)
			c.mu.Unlock()
			return out
		}
		c.mu.Unlock()
		select {
		case <-c.got:
		case <-deadline:
			t.Fatalf("timed out waiting for %d kills, have %+v", n, c.kills)
		}
	}
}

func runReader(t *testing.T, r *Reader) <-chan error {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- r.Run() }()
	return errc
}

func openWriter(t *testing.T, path string) *os.File {
	t.Helper()
	w, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// scriptReads makes the Reader's reads return these answers in order (a
// string is a record, an error an errno), then EAGAIN: the real device does
// not overrun on demand. Run still polls the real fd, which must not be
// readable (a FIFO with an idle writer).
func scriptReads(r *Reader, answers ...any) {
	var mu sync.Mutex
	r.read = func(fd int, p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		if len(answers) == 0 {
			return 0, unix.EAGAIN
		}
		next := answers[0]
		answers = answers[1:]
		if err, ok := next.(error); ok {
			return 0, err
		}
		return copy(p, next.(string)), nil
	}
}

func kmsgRecord(seq uint64, text string) string {
	return fmt.Sprintf("6,%d,%d,-;%s\n", seq, seq*1000, text)
}

// TestReaderSurvivesGarbage feeds a FIFO with what a broken or hostile
// source could produce, then a real report: the kill must come through.
func TestReaderSurvivesGarbage(t *testing.T) {
	path := fifo(t)
	c := newCollector()
	r, err := Open(c.config(path))
	if err != nil {
		t.Fatal(err)
	}
	w := openWriter(t, path) // before Run: a FIFO without a writer reads as EOF
	errc := runReader(t, r)
	for _, chunk := range []string{
		"garbage without a header\n",
		strings.Repeat("x", 70<<10) + "\n", // over-long: bigger than any record
		"6,1,1000,-;\n",                    // empty message
		"6,2,2000,-;\xff\xfe\x00\n",        // bytes the kernel would have escaped
		"6,3,3000,-;usb 1-1: new device\n SUBSYSTEM=usb\n DEVICE=c189:1\n",
		// Forged by userspace: facility 1 (LOG_USER), never a kill.
		"14,4,4000,-;Memory cgroup out of memory: Killed process 4 (forged) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:1kB oom_score_adj:0\n",
		kmsgRecord(5, sum100),
		// Two records in one write, as a FIFO or a file may deliver them.
		kmsgRecord(6, kill100) + kmsgRecord(7, "oom_reaper: reaped process 100 (app), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB"),
		// A record split across writes.
		kmsgRecord(8, kill200)[:20],
	} {
		if _, err := io.WriteString(w, chunk); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(50 * time.Millisecond) // let the split record's first half be read alone
	if _, err := io.WriteString(w, kmsgRecord(8, kill200)[20:]); err != nil {
		t.Fatal(err)
	}
	kills := c.wait(t, 2)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("Run after Close: %v", err)
	}
	if len(kills) != 2 || kills[0].Pid != 100 || kills[0].TaskMemcg != "/pod/c1" || kills[0].Seq != 6 || kills[1].Pid != 200 {
		t.Errorf("kills = %+v", kills)
	}
	st := r.Stats()
	if st.Malformed != 2 || st.Records != 8 || st.Kills != 2 || st.Overruns != 0 || st.LostRecords != 0 {
		t.Errorf("stats = %+v, want 2 malformed, 8 records, 2 kills", st)
	}
}

// TestReaderOverrun injects EPIPE, which /dev/kmsg returns when the ring
// buffer overwrote records before we read them: the Reader counts it,
// reports the loss with the number of records from the sequence gap, and
// carries on.
func TestReaderOverrun(t *testing.T) {
	path := fifo(t)
	c := newCollector()
	r, err := Open(c.config(path))
	if err != nil {
		t.Fatal(err)
	}
	openWriter(t, path) // keeps poll waiting once the script is done
	// Records 2..9 are overwritten before the Reader gets to them.
	scriptReads(r, kmsgRecord(1, "hello"), unix.EPIPE, kmsgRecord(10, kill100))
	errc := runReader(t, r)
	kills := c.wait(t, 1)
	r.Close()
	if err := <-errc; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(kills) != 1 || kills[0].Pid != 100 || kills[0].Enriched {
		t.Errorf("kills = %+v, want one bare kill of 100", kills)
	}
	st := r.Stats()
	if st.Overruns != 1 || st.LostRecords != 8 || st.Records != 2 {
		t.Errorf("stats = %+v, want 1 overrun, 8 lost, 2 records", st)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.losses) != 1 || !c.losses[0].Overrun || c.losses[0].Records != 8 {
		t.Errorf("losses = %+v, want one overrun of 8 records", c.losses)
	}
}

// TestReaderOverrunDropsContext: a summary read before an overrun must not
// be merged into the kill line read after it: the records between, which
// may hold another report, are gone.
func TestReaderOverrunDropsContext(t *testing.T) {
	path := fifo(t)
	c := newCollector()
	r, err := Open(c.config(path))
	if err != nil {
		t.Fatal(err)
	}
	openWriter(t, path)
	scriptReads(r, kmsgRecord(1, sum100), unix.EPIPE, kmsgRecord(7, kill100))
	errc := runReader(t, r)
	kills := c.wait(t, 1)
	r.Close()
	if err := <-errc; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(kills) != 1 || kills[0].Pid != 100 || kills[0].Enriched || kills[0].TaskMemcg != "" {
		t.Errorf("kills = %+v, want one bare kill of 100", kills)
	}
}

// TestReaderGap: a sequence gap without EPIPE is reported too.
func TestReaderGap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "records")
	data := kmsgRecord(1, sum100) + kmsgRecord(5, kill100)
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newCollector()
	cfg := c.config(path)
	cfg.FromBoot = true
	r, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Run(); !errors.Is(err, io.EOF) {
		t.Fatalf("Run on a file = %v, want EOF at its end", err)
	}
	if len(c.kills) != 1 || c.kills[0].Enriched || len(c.losses) != 1 || c.losses[0].Overrun || c.losses[0].Records != 3 {
		t.Errorf("kills %+v losses %+v, want a bare kill after a loss of 3", c.kills, c.losses)
	}
}

// TestReaderFile replays a captured sample through the whole Reader, from a
// regular file: every read may hold many records and end inside one.
func TestReaderFile(t *testing.T) {
	c := newCollector()
	cfg := c.config(filepath.Join("testdata", "self-linux-6.18-cgroup-v1.kmsg"))
	cfg.FromBoot = true
	r, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.buf = make([]byte, 97) // an odd size, so records straddle reads
	if err := r.Run(); !errors.Is(err, io.EOF) {
		t.Fatalf("Run = %v, want EOF", err)
	}
	if len(c.kills) != 1 || c.kills[0].Pid != selfPid || c.kills[0].TaskMemcg != selfCgroup {
		t.Errorf("kills = %+v", c.kills)
	}
	// The header comment lines are not records: 7 lines of '#'.
	if st := r.Stats(); st.Malformed != 7 || st.Records != 80 {
		t.Errorf("stats = %+v", st)
	}
}

// TestReaderGrowsOnEINVAL: a record larger than the buffer makes the device
// fail the read with EINVAL without advancing; the Reader must retry with a
// bigger buffer, not spin or stop.
func TestReaderGrowsOnEINVAL(t *testing.T) {
	path := fifo(t)
	c := newCollector()
	r, err := Open(c.config(path))
	if err != nil {
		t.Fatal(err)
	}
	r.read = func(fd int, p []byte) (int, error) {
		if len(p) < 64<<10 {
			return 0, unix.EINVAL
		}
		return unix.Read(fd, p)
	}
	w := openWriter(t, path) // before Run: a FIFO without a writer reads as EOF
	errc := runReader(t, r)
	io.WriteString(w, kmsgRecord(1, kill100))
	c.wait(t, 1)
	r.Close()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if len(r.buf) < 64<<10 || len(r.buf) > maxBuf {
		t.Errorf("buffer %d bytes", len(r.buf))
	}
}

// TestReaderSkipsUnreadable: EINVAL even at the largest buffer means a
// record we will never read; the Reader skips to the end and reports a loss.
func TestReaderSkipsUnreadable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "records")
	if err := os.WriteFile(path, []byte(kmsgRecord(1, kill100)), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newCollector()
	cfg := c.config(path)
	cfg.FromBoot = true
	r, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var skipped atomic.Bool
	r.read = func(fd int, p []byte) (int, error) {
		if !skipped.Load() {
			off, _ := unix.Seek(fd, 0, io.SeekCurrent)
			if off != 0 {
				skipped.Store(true) // the Reader sought to the end
				return unix.Read(fd, p)
			}
			return 0, unix.EINVAL
		}
		return unix.Read(fd, p)
	}
	if err := r.Run(); !errors.Is(err, io.EOF) {
		t.Fatalf("Run = %v, want EOF", err)
	}
	if !skipped.Load() || len(c.kills) != 0 || r.Stats().Malformed != 1 {
		t.Errorf("skipped %v, kills %+v, stats %+v", skipped.Load(), c.kills, r.Stats())
	}
}

// TestReaderClose: Close wakes a Run that is waiting with nothing to read,
// waits for it, and may be called again; Run after Close refuses.
func TestReaderClose(t *testing.T) {
	path := fifo(t)
	r, err := Open(Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	openWriter(t, path) // a writer that writes nothing: reads say EAGAIN, Run waits
	errc := runReader(t, r)
	time.Sleep(50 * time.Millisecond) // let Run reach poll
	closed := make(chan error, 1)
	go func() { closed <- r.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return: Run not woken")
	}
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Run = %v, want nil after Close", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after Close")
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := r.Run(); !errors.Is(err, ErrClosed) {
		t.Errorf("Run after Close = %v, want ErrClosed", err)
	}

	// Close before Run ever started.
	r2, err := Open(Config{Path: fifo(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r2.Run(); !errors.Is(err, ErrClosed) {
		t.Errorf("Run after Close = %v, want ErrClosed", err)
	}
}

// TestReaderCloseUnderFlood: a source that never runs dry must not keep
// Close waiting.
func TestReaderCloseUnderFlood(t *testing.T) {
	path := fifo(t)
	r, err := Open(Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	rec := []byte(kmsgRecord(1, "x"))
	r.read = func(fd int, p []byte) (int, error) { return copy(p, rec), nil }
	errc := runReader(t, r)
	time.Sleep(20 * time.Millisecond)
	done := make(chan struct{})
	go func() { r.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close starved by a flooding source")
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open(Config{Path: filepath.Join(t.TempDir(), "missing")}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("Open(missing) = %v, want an error naming the path", err)
	}
}
