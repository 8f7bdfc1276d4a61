package cgroup

import (
	"os"
	"strings"
	"testing"
)

func TestParseUint(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		err  bool
	}{
		{"1048576\n", 1048576, false},
		{"max\n", Unlimited, false},
		{"9223372036854771712\n", 9223372036854771712, false},
		{"", 0, true},
		{"-1\n", 0, true},
		{"12 34\n", 0, true},
	} {
		got, err := ParseUint(strings.NewReader(tc.in))
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseUint(%q) = %d, %v; want %d, err=%v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestParseFlatKeyedRealFiles(t *testing.T) {
	for _, tc := range []struct {
		file string
		key  string
	}{
		{"testdata/v1/memory.stat", "total_inactive_file"},
		{"testdata/v1/memory.oom_control", "oom_kill"},
	} {
		f, err := os.Open(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		m, err := ParseFlatKeyed(f)
		f.Close()
		if err != nil {
			t.Errorf("%s: %v", tc.file, err)
		}
		if _, ok := m[tc.key]; !ok {
			t.Errorf("%s: no %s in %v", tc.file, tc.key, m)
		}
	}
}

func TestParseFlatKeyedRejectsGarbage(t *testing.T) {
	for _, in := range []string{"cache\n", "cache x\n", "cache -5\n", "a 1\nb 99999999999999999999999\n"} {
		if _, err := ParseFlatKeyed(strings.NewReader(in)); err == nil {
			t.Errorf("ParseFlatKeyed(%q): no error", in)
		}
	}
}

func TestParsePids(t *testing.T) {
	pids, err := ParsePids(strings.NewReader("1\n22\n\n333\n"))
	if err != nil || len(pids) != 3 || pids[2] != 333 {
		t.Fatalf("got %v, %v", pids, err)
	}
	if _, err := ParsePids(strings.NewReader("1\nabc\n")); err == nil {
		t.Fatal("garbage pid accepted")
	}
	if _, err := ParsePids(strings.NewReader("0\n")); err == nil {
		t.Fatal("pid 0 accepted")
	}
}

func TestStatText(t *testing.T) {
	got := statText([]byte("cache 20480\nrss 205938688\n"))
	if got != "cache 20480|rss 205938688|" {
		t.Fatalf("got %q", got)
	}
}

func TestClean(t *testing.T) {
	for in, want := range map[string]string{"": "/", "/": "/", "a/b": "/a/b", "/a//b/": "/a/b", "/a/./b": "/a/b"} {
		if got, err := Clean(in); err != nil || got != want {
			t.Errorf("Clean(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"..", "/a/../../etc", "a/..", "a\x00b"} {
		if _, err := Clean(in); err == nil {
			t.Errorf("Clean(%q): no error", in)
		}
	}
}

func FuzzParseFlatKeyed(f *testing.F) {
	if data, err := os.ReadFile("testdata/v1/memory.stat"); err == nil {
		f.Add(string(data))
	}
	f.Add("oom_kill_disable 0\nunder_oom 1\n")
	f.Fuzz(func(t *testing.T, in string) {
		_, _ = ParseFlatKeyed(strings.NewReader(in))
	})
}
