// Package kmsg turns the kernel's OOM reports into Kills: a pure parser of
// /dev/kmsg records (every report format a production fleet still runs, from
// CentOS 7's 3.10 to current kernels) and a Reader that follows /dev/kmsg.
//
// The kernel log is enrichment, not the source of truth: the summary line of
// a report is rate-limited, records are lost when the ring buffer overruns,
// and a reader can start in the middle of a report. The cgroup OOM counters
// always count, so the guard counts kills from them and uses a Kill from here
// to say which process died and where. For the same reason the parser emits
// a Kill for every kill line it sees, whatever context it lost.
package kmsg

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
)

// Record is one /dev/kmsg record (Documentation/ABI/testing/dev-kmsg):
// "PRI,SEQ,TS_USEC,FLAGS[,MORE...];MESSAGE\n" followed by optional
// " KEY=VALUE\n" dictionary lines.
type Record struct {
	Facility  int // 0 is the kernel; userspace cannot write facility 0
	Level     int
	Seq       uint64
	Monotonic time.Duration // CLOCK_MONOTONIC when the kernel stored it

	// Flag is '-' for a whole line; 'c' and '+' mark fragments of a line the
	// kernel could not store as one record (pr_cont interrupted by another
	// printk). Their meaning differs between kernel versions, so the parser
	// treats both only as "this may continue the previous record".
	Flag byte

	Text string            // the message, with the kernel's \xNN escapes decoded
	Dict map[string]string // SUBSYSTEM=, DEVICE= and the like; nil when absent
}

// ErrMalformed is wrapped by every ParseRecord error.
var ErrMalformed = errors.New("malformed /dev/kmsg record")

// maxHeader bounds the prefix scan: a real header is under 64 bytes, and
// garbage without a ';' must not be scanned to the end of a large buffer.
const maxHeader = 256

// ParseRecord parses one /dev/kmsg record. The Text and Dict it returns do
// not alias b.
func ParseRecord(b []byte) (Record, error) {
	var r Record
	head := b
	if len(head) > maxHeader {
		head = head[:maxHeader]
	}
	semi := bytes.IndexByte(head, ';')
	if semi < 0 {
		return r, fmt.Errorf("%w: no ';' after the header in %q", ErrMalformed, clip(b))
	}
	fields := bytes.Split(b[:semi], []byte{','})
	if len(fields) < 4 {
		return r, fmt.Errorf("%w: header %q has %d fields, want at least 4", ErrMalformed, b[:semi], len(fields))
	}
	pri, err := strconv.ParseUint(string(fields[0]), 10, 32)
	if err != nil {
		return r, fmt.Errorf("%w: priority %q: %v", ErrMalformed, fields[0], err)
	}
	r.Facility, r.Level = int(pri>>3), int(pri&7)
	if r.Seq, err = strconv.ParseUint(string(fields[1]), 10, 64); err != nil {
		return r, fmt.Errorf("%w: sequence %q: %v", ErrMalformed, fields[1], err)
	}
	usec, err := strconv.ParseUint(string(fields[2]), 10, 64)
	if err != nil || usec > math.MaxInt64/uint64(time.Microsecond) {
		return r, fmt.Errorf("%w: timestamp %q", ErrMalformed, fields[2])
	}
	r.Monotonic = time.Duration(usec) * time.Microsecond
	r.Flag = '-'
	if len(fields[3]) > 0 {
		r.Flag = fields[3][0]
	}
	// Fields after the fourth (caller=T123 with CONFIG_PRINTK_CALLER) are
	// future extensions the ABI says to ignore.

	body := b[semi+1:]
	msg, rest, _ := bytes.Cut(body, []byte{'\n'})
	r.Text = unescape(msg)
	for len(rest) > 0 && rest[0] == ' ' {
		var line []byte
		line, rest, _ = bytes.Cut(rest[1:], []byte{'\n'})
		k, v, ok := bytes.Cut(line, []byte{'='})
		if !ok || len(k) == 0 {
			continue
		}
		if r.Dict == nil {
			r.Dict = make(map[string]string, 2)
		}
		r.Dict[string(k)] = unescape(v)
	}
	return r, nil
}

// unescape decodes the kernel's "\xNN" escapes. The kernel escapes '\'
// itself, so every "\x" followed by two hex digits is an escape; anything
// else is kept as it is rather than rejected.
func unescape(b []byte) string {
	if bytes.IndexByte(b, '\\') < 0 {
		return string(b)
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		if b[i] == '\\' && i+3 < len(b) && b[i+1] == 'x' {
			hi, ok1 := unhex(b[i+2])
			lo, ok2 := unhex(b[i+3])
			if ok1 && ok2 {
				out = append(out, hi<<4|lo)
				i += 3
				continue
			}
		}
		out = append(out, b[i])
	}
	return string(out)
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// clip keeps error messages short when the input is a large garbage buffer.
func clip(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}
