package kmsg

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// DefaultPath is the kernel's record-oriented log device.
const DefaultPath = "/dev/kmsg"

const (
	// A /dev/kmsg read must fit a whole record or it fails with EINVAL and
	// does not advance. The kernel formats a record into 8 KiB
	// (CONSOLE_EXT_LOG_MAX) today; the buffer grows on EINVAL in case some
	// kernel does more.
	initialBuf = 16 << 10
	maxBuf     = 1 << 20
)

// Config configures a Reader.
type Config struct {
	// Path is the device to read, DefaultPath when empty. Tests point it at a
	// FIFO or a regular file holding records.
	Path string

	// FromBoot starts at the oldest record still in the ring buffer
	// (SEEK_SET) instead of at its end (SEEK_END). The default, from now, is
	// what a restarted agent wants: the kills before it started are already
	// counted in the cgroup counters and would be reported twice.
	FromBoot bool

	// OnKill receives every Kill, on the goroutine that calls Run. Reading
	// stops while it runs; if it blocks long the ring buffer overruns, which
	// is survived and reported through OnLoss.
	OnKill func(Kill)

	// OnLoss is told when records were lost, so that the caller can
	// reconcile with the cgroup counters. Optional.
	OnLoss func(Loss)
}

// Loss describes records the Reader did not see.
type Loss struct {
	Overrun bool   // the Reader was moved past records: EPIPE (overwritten under us) or an unreadable record skipped
	Records uint64 // how many, from the sequence numbers; 0 if unknown
}

// Stats are the Reader's counters since Open.
type Stats struct {
	Records     uint64 // records parsed
	Malformed   uint64 // records that did not parse, or oversized garbage
	Overruns    uint64 // EPIPE from read: records overwritten before we read them
	LostRecords uint64 // records missing from the sequence numbers
	Kills       uint64 // Kills delivered
}

// Reader follows /dev/kmsg and delivers Kills. One goroutine calls Run;
// Close may be called from any goroutine, at any time.
type Reader struct {
	path   string
	cfg    Config
	fd     int
	wakefd int
	parser *Parser
	buf    []byte
	carry  []byte // a record split across reads (FIFOs and files only)

	// read is unix.Read; tests replace it to inject EPIPE, which the real
	// device cannot be made to return on demand. tap, when set by a test,
	// sees every raw record.
	read func(fd int, p []byte) (int, error)
	tap  func([]byte)

	haveSeq bool
	lastSeq uint64
	overrun bool // EPIPE seen, Loss not yet reported

	mu      sync.Mutex
	running bool
	closing atomic.Bool
	done    chan struct{}
	closed  sync.Once

	records, malformed, overruns, lost, kills atomic.Uint64
}

// ErrClosed is returned by Run after Close.
var ErrClosed = errors.New("kmsg reader closed")

// Open opens the device non-blocking and positions it: at the end (only
// records from now on) or, with FromBoot, at the oldest record.
func Open(cfg Config) (*Reader, error) {
	path := cfg.Path
	if path == "" {
		path = DefaultPath
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	whence := unix.SEEK_END
	if cfg.FromBoot {
		whence = unix.SEEK_SET
	}
	// A FIFO cannot seek (ESPIPE) and needs no positioning.
	if _, err := unix.Seek(fd, 0, whence); err != nil && err != unix.ESPIPE {
		unix.Close(fd)
		return nil, fmt.Errorf("seek %s: %w", path, err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("eventfd for %s reader: %w", path, err)
	}
	return &Reader{
		path: path, cfg: cfg, fd: fd, wakefd: wakefd,
		parser: NewParser(), buf: make([]byte, initialBuf),
		read: unix.Read, done: make(chan struct{}),
	}, nil
}

// Run reads until Close, delivering Kills to OnKill. It returns nil after
// Close, ErrClosed if Close came first, or an error when reading fails for
// good (for a FIFO or file, io.EOF wrapped when its data ends; /dev/kmsg
// does not end).
func (r *Reader) Run() error {
	r.mu.Lock()
	if r.closing.Load() {
		r.mu.Unlock()
		return ErrClosed
	}
	if r.running {
		r.mu.Unlock()
		return errors.New("kmsg reader: Run called twice")
	}
	r.running = true
	r.mu.Unlock()
	defer close(r.done)

	fds := []unix.PollFd{{Fd: int32(r.fd), Events: unix.POLLIN}, {Fd: int32(r.wakefd), Events: unix.POLLIN}}
	for {
		if err := r.drain(); err != nil || r.closing.Load() {
			return err
		}
		fds[0].Revents, fds[1].Revents = 0, 0
		if _, err := unix.Poll(fds, -1); err != nil && err != unix.EINTR {
			return fmt.Errorf("poll %s: %w", r.path, err)
		}
		if fds[1].Revents != 0 || r.closing.Load() {
			return nil
		}
		if fds[0].Revents&unix.POLLNVAL != 0 {
			return fmt.Errorf("poll %s: fd no longer valid", r.path)
		}
		// POLLIN, POLLERR|POLLPRI (an overrun: the next read says EPIPE) and
		// POLLHUP (a FIFO's writer left: the read says EOF) all mean read.
	}
}

// drain reads until the device has nothing more (EAGAIN).
func (r *Reader) drain() error {
	for !r.closing.Load() {
		n, err := r.read(r.fd, r.buf)
		switch {
		case err == unix.EAGAIN:
			return nil
		case err == unix.EINTR:
			continue
		case err == unix.EPIPE:
			// The kernel moved us to the oldest record still there; the
			// next record's sequence number says how many we missed.
			r.overruns.Add(1)
			r.overrun = true
			r.parser.Lost()
			continue
		case err == unix.EINVAL && len(r.buf) < maxBuf:
			r.buf = make([]byte, 2*len(r.buf))
			continue
		case err == unix.EINVAL:
			// A record larger than we will ever buffer blocks the device
			// for good; skip everything to the end rather than stop.
			if _, err := unix.Seek(r.fd, 0, unix.SEEK_END); err != nil {
				return fmt.Errorf("skip oversized record in %s: %w", r.path, err)
			}
			r.malformed.Add(1)
			r.overrun = true
			r.parser.Lost()
			continue
		case err != nil:
			return fmt.Errorf("read %s: %w", r.path, err)
		case n == 0:
			return fmt.Errorf("read %s: %w", r.path, io.EOF)
		}
		r.consume(r.buf[:n])
	}
	return nil
}

// consume handles one read. From /dev/kmsg that is exactly one record; from
// a FIFO or a file it may be several, or end inside one. A record ends at a
// newline not followed by a space (a space starts a dictionary line).
func (r *Reader) consume(b []byte) {
	if len(r.carry) > 0 {
		b = append(r.carry, b...)
		r.carry = nil
	}
	for len(b) > 0 {
		end := recordEnd(b)
		if end < 0 {
			if len(b) > maxBuf {
				r.malformed.Add(1)
				return
			}
			r.carry = append([]byte(nil), b...)
			return
		}
		r.record(b[:end])
		b = b[end:]
	}
}

// recordEnd returns the length of the first record in b, or -1 if b holds
// no newline that can end one.
func recordEnd(b []byte) int {
	off := 0
	for {
		i := bytes.IndexByte(b[off:], '\n')
		if i < 0 {
			return -1
		}
		off += i + 1
		if off == len(b) || b[off] != ' ' {
			return off
		}
	}
}

func (r *Reader) record(b []byte) {
	if r.tap != nil {
		r.tap(b)
	}
	rec, err := ParseRecord(b)
	if err != nil {
		r.malformed.Add(1)
		return
	}
	r.records.Add(1)
	if r.haveSeq && rec.Seq != r.lastSeq+1 || r.overrun {
		var missed uint64
		if r.haveSeq && rec.Seq > r.lastSeq+1 {
			missed = rec.Seq - r.lastSeq - 1
		}
		if missed > 0 || r.overrun {
			r.lost.Add(missed)
			if !r.overrun {
				r.parser.Lost()
			}
			if r.cfg.OnLoss != nil {
				r.cfg.OnLoss(Loss{Overrun: r.overrun, Records: missed})
			}
		}
		r.overrun = false
	}
	r.haveSeq, r.lastSeq = true, rec.Seq
	if k, ok := r.parser.Feed(rec); ok {
		r.kills.Add(1)
		if r.cfg.OnKill != nil {
			r.cfg.OnKill(k)
		}
	}
}

// Stats returns the counters; safe from any goroutine.
func (r *Reader) Stats() Stats {
	return Stats{
		Records: r.records.Load(), Malformed: r.malformed.Load(),
		Overruns: r.overruns.Load(), LostRecords: r.lost.Load(), Kills: r.kills.Load(),
	}
}

// Close stops Run and releases the device. It wakes Run through the eventfd
// and waits for it to return before closing anything, so no fd is closed
// under a poll or read in progress. Safe to call more than once, but not
// from OnKill or OnLoss: those run inside Run, which Close waits for.
func (r *Reader) Close() error {
	var err error
	r.closed.Do(func() {
		r.mu.Lock()
		r.closing.Store(true)
		running := r.running
		r.mu.Unlock()
		one := [8]byte{1}
		_, _ = unix.Write(r.wakefd, one[:])
		if running {
			<-r.done
		}
		err = unix.Close(r.fd)
		unix.Close(r.wakefd)
		if err != nil {
			err = fmt.Errorf("close %s: %w", r.path, err)
		}
	})
	return err
}
