package kill

import (
	"bytes"
	"os"
	"testing"
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
