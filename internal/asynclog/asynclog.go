// Package asynclog is the guard's log output: a writer that never blocks
// its caller, for klog.
//
// klog writes each line to its output while holding its one mutex. Were
// that output the process's stderr, a container runtime slow to drain the
// pipe behind it would leave a goroutine blocked in write(2) with the
// mutex held, and the guard's real-time loop, logging anything at all,
// blocked behind it: a priority inversion on the kill path. Through a
// Writer, klog's critical section is a copy into memory; one goroutine
// of normal priority does the writing. When the queue is full (the pipe
// has not drained for a while), lines are dropped and counted, and a line
// says how many once there is room again.
package asynclog

import (
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"
)

// Writer queues writes for one goroutine to pass on to an io.Writer.
type Writer struct {
	out     io.Writer
	queue   chan []byte
	dropped atomic.Uint64
	done    chan struct{}
	stop    sync.Once
	quit    chan struct{}
	// flushes asks the writing goroutine to say when it has written
	// everything queued before the request.
	flushes chan chan struct{}
}

// New starts a Writer onto out with room for lines writes; Close stops it.
func New(out io.Writer, lines int) *Writer {
	w := &Writer{out: out, queue: make(chan []byte, lines), done: make(chan struct{}),
		quit: make(chan struct{}), flushes: make(chan chan struct{})}
	go w.run()
	return w
}

// Write queues a copy of p; it never blocks. A full queue drops p.
func (w *Writer) Write(p []byte) (int, error) {
	select {
	case w.queue <- append([]byte(nil), p...):
	default:
		w.dropped.Add(1)
	}
	return len(p), nil
}

// Dropped is how many writes a full queue has turned away.
func (w *Writer) Dropped() uint64 { return w.dropped.Load() }

func (w *Writer) run() {
	defer close(w.done)
	reported := uint64(0)
	for {
		select {
		case p := <-w.queue:
			_, _ = w.out.Write(p)
		case ack := <-w.flushes:
			w.drain()
			close(ack)
			continue
		case <-w.quit:
			w.drain()
			w.sayDropped(&reported)
			return
		}
		w.sayDropped(&reported)
	}
}

// drain writes what is queued now.
func (w *Writer) drain() {
	for {
		select {
		case p := <-w.queue:
			_, _ = w.out.Write(p)
		default:
			return
		}
	}
}

// sayDropped writes one line for the writes dropped since the last one.
func (w *Writer) sayDropped(reported *uint64) {
	if n := w.dropped.Load(); n > *reported {
		fmt.Fprintf(w.out, "oom-guard: %d log lines dropped: the log output did not keep up\n", n-*reported)
		*reported = n
	}
}

// Flush waits, up to timeout, until what was queued before it is written.
func (w *Writer) Flush(timeout time.Duration) {
	ack := make(chan struct{})
	select {
	case w.flushes <- ack:
	case <-w.done:
		return
	case <-time.After(timeout):
		return
	}
	select {
	case <-ack:
	case <-time.After(timeout):
	}
}

// Close writes what is queued (up to timeout) and stops the goroutine.
// A nil Writer has nothing to close.
func (w *Writer) Close(timeout time.Duration) {
	if w == nil {
		return
	}
	w.stop.Do(func() { close(w.quit) })
	select {
	case <-w.done:
	case <-time.After(timeout):
	}
}

// Klog routes klog's logging to stderr (its default, and --logtostderr)
// through a new Writer onto stderr with room for lines, one write per line,
// and returns the Writer (to Close at exit); nil where klog logs to files,
// which is left as it is. fs holds klog's flags (klog.InitFlags), parsed;
// nil for a program that takes none of them.
func Klog(fs *flag.FlagSet, lines int) *Writer {
	if fs == nil {
		fs = flag.NewFlagSet("klog", flag.ContinueOnError)
		klog.InitFlags(fs)
	}
	if f := fs.Lookup("logtostderr"); f == nil || f.Value.String() != "true" {
		return nil
	}
	// stderrthreshold FATAL: only a fatal line goes to stderr directly too.
	for name, value := range map[string]string{"logtostderr": "false", "one_output": "true", "stderrthreshold": "FATAL"} {
		if err := fs.Set(name, value); err != nil {
			return nil
		}
	}
	w := New(os.Stderr, lines)
	klog.SetOutput(w)
	return w
}
