package asynclog

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// A Writer onto a pipe nobody reads never blocks its caller: the pipe
// fills, then the queue, then lines are dropped and counted. Once the pipe
// is read, the queued lines come out in order, then one line saying how
// many were dropped.
func TestWriterNeverBlocks(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	aw := New(w, 16)
	line := strings.Repeat("x", 1000) + "\n"
	start := time.Now()
	const n = 200 // 200 KB: more than the pipe (64 KiB) and the queue hold
	for i := 0; i < n; i++ {
		if _, err := aw.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("%d writes onto a full pipe took %v", n, took)
	}
	dropped := aw.Dropped()
	if dropped == 0 || dropped >= n {
		t.Fatalf("dropped %d of %d", dropped, n)
	}
	got := make(chan []string)
	go func() {
		var lines []string
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 4096), 4096)
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
		got <- lines
	}()
	aw.Close(5 * time.Second)
	w.Close()
	payload, noticed := 0, uint64(0)
	for _, l := range <-got {
		var k uint64
		switch {
		case l == line[:len(line)-1]:
			payload++
		case strings.HasPrefix(l, "oom-guard: "):
			if _, err := fmt.Sscanf(l, "oom-guard: %d log lines dropped", &k); err != nil {
				t.Fatalf("line %q: %v", l, err)
			}
			noticed += k
		default:
			t.Fatalf("line %q", l)
		}
	}
	if payload != n-int(dropped) || noticed != dropped {
		t.Fatalf("%d lines out and %d said dropped; want %d and %d", payload, noticed, n-int(dropped), dropped)
	}
}

// Flush returns once what was queued is written.
func TestFlush(t *testing.T) {
	var out strings.Builder // written by the Writer's goroutine alone until Flush returns
	aw := New(&out, 16)
	defer aw.Close(time.Second)
	_, _ = aw.Write([]byte("one\n"))
	_, _ = aw.Write([]byte("two\n"))
	aw.Flush(time.Second)
	if s := out.String(); s != "one\ntwo\n" {
		t.Fatalf("after Flush: %q", s)
	}
}
