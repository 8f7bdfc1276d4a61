package kmsg

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// seedRecords returns the raw records of the captured sample.
func seedRecords(f *testing.F) [][]byte {
	data, err := os.ReadFile(filepath.Join("testdata", "self-linux-6.18-cgroup-v1.kmsg"))
	if err != nil {
		f.Fatal(err)
	}
	var out [][]byte
	for len(data) > 0 {
		end := recordEnd(data)
		if end < 0 {
			end = len(data)
		}
		out = append(out, data[:end])
		data = data[end:]
	}
	return out
}

// FuzzParseRecord: any bytes parse or fail with ErrMalformed, never panic,
// and what parses is within the ABI's ranges.
func FuzzParseRecord(f *testing.F) {
	for _, r := range seedRecords(f) {
		f.Add(r)
	}
	f.Add([]byte("7,160,424069,-;pci_root PNP0A03:00: host bridge\n SUBSYSTEM=acpi\n DEVICE=+acpi:PNP0A03:00\n"))
	f.Add([]byte(`6,1,2,c,caller=T1;a\x5c\x0ab\xzz\` + "\n \n =\n x\n"))
	f.Add([]byte("6,1,18446744073709551615,-;x"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRecord(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if r.Level < 0 || r.Level > 7 || r.Facility < 0 || r.Monotonic < 0 {
			t.Fatalf("out of range: %+v", r)
		}
		if strings.Contains(r.Text, "\n") && !bytes.Contains(b, []byte(`\x0a`)) && !bytes.Contains(b, []byte(`\x0A`)) {
			t.Fatalf("newline in Text not from an escape: %q", r.Text)
		}
	})
}

// FuzzParser feeds arbitrary lines, with arbitrary flags, facilities, clock
// jumps and losses, to the state machine: it must never panic, and every
// Kill it returns must be a plausible one.
func FuzzParser(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.*")
	for _, path := range files {
		var lines []string
		for _, r := range loadSample(f, filepath.Base(path)) {
			lines = append(lines, r.Text)
		}
		f.Add(strings.Join(lines, "\n"), []byte{})
	}
	f.Add(sum100+"\n"+kill100+"\nTasks in /pod/c1 are going to be killed due to memory.oom.group set\n"+kill100+"\n"+kill200,
		[]byte{0, 0, 0, 0, 0x20})
	f.Add("oom-kill:constraint=X,nodemask=(null)\n,oom_memcg=/a,task_memcg=/a\n,task=x,pid=5,uid=0\nKilled process 5 (x) total-vm:1kB",
		[]byte{0, 1, 1, 0})
	f.Add("Task in /a\n killed as a result of limit of /b\nMemory cgroup out of memory: Kill process 3 (x) score 1 or sacrifice child\nKill process 4 (y) sharing same memory\nKilled process 4 (y) total-vm:1kB\nKill process 4 (y) sharing same memory",
		[]byte{1, 2, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data string, ctl []byte) {
		p := NewParser()
		at := time.Duration(0)
		for i, line := range strings.Split(data, "\n") {
			r := Record{Seq: uint64(i), Flag: '-', Text: line}
			if i < len(ctl) {
				c := ctl[i]
				r.Flag = "-c+-"[c&3]
				if c&0x10 != 0 {
					p.Lost()
				}
				switch {
				case c&0x20 != 0:
					at += 40 * time.Second // past every window
				case c&0x40 != 0:
					at -= time.Second // clocks are not trusted to be sane
				}
				if c&0x80 != 0 {
					r.Facility = 1
				}
			}
			at += time.Millisecond
			r.Monotonic = at
			k, ok := p.Feed(r)
			if !ok {
				continue
			}
			if k.Pid <= 0 || k.Pid > 1<<22 || k.Seq != r.Seq || r.Facility != 0 {
				t.Fatalf("implausible kill %+v from record %+v", k, r)
			}
			if k.GroupKill != (k.OOMGroup != "") || k.Memcg && k.Global {
				t.Fatalf("inconsistent kill %+v", k)
			}
			if k.OOMScoreAdj != 0 && !k.HasOOMScoreAdj || k.UID < -1 {
				t.Fatalf("inconsistent kill %+v", k)
			}
			if !strings.Contains(r.Text, "Killed process ") && !strings.HasSuffix(r.Text, txtSharing) {
				t.Fatalf("kill %+v from a record that is no kill line: %q", k, r.Text)
			}
		}
	})
}

// FuzzReaderConsume: whatever a read returns, split or joined, the Reader's
// record splitting never panics and accounts for every record it finds.
func FuzzReaderConsume(f *testing.F) {
	for _, r := range seedRecords(f) {
		f.Add(r, uint16(7))
	}
	f.Add([]byte(kmsgRecord(1, sum100)+kmsgRecord(2, kill100)+" \n\n\n \n"), uint16(3))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint16) {
		r := &Reader{parser: NewParser()}
		n := int(chunk%512) + 1
		for off := 0; off < len(data); off += n {
			end := off + n
			if end > len(data) {
				end = len(data)
			}
			r.consume(data[off:end])
		}
		if len(r.carry) > maxBuf {
			t.Fatalf("carry grew to %d bytes", len(r.carry))
		}
		if st := r.Stats(); st.Kills > st.Records {
			t.Fatalf("stats %+v", st)
		}
	})
}
