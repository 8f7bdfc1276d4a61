package kill

import (
	"os"
	"strings"
	"testing"
)

// testdata/proc holds real /proc files of this machine's processes,
// including one whose comm has spaces and parentheses.
func TestParseStatRealSamples(t *testing.T) {
	for _, tc := range []struct {
		file, comm string
		start      uint64
	}{
		{"testdata/proc/stat-cat", "cat", 959156},
		{"testdata/proc/stat-parens", "w) (x y", 959456},
	} {
		data, err := os.ReadFile(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		comm, start, err := ParseStat(data)
		if err != nil || comm != tc.comm || start != tc.start {
			t.Errorf("%s: got %q %d %v, want %q %d", tc.file, comm, start, err, tc.comm, tc.start)
		}
	}
	for _, bad := range []string{"", "12 cat R 1", "12 (cat) R 1 2 3", "1 (x) " + strings.Repeat("0 ", 18) + "notanumber"} {
		if _, _, err := ParseStat([]byte(bad)); err == nil {
			t.Errorf("ParseStat(%q): no error", bad)
		}
	}
}

func TestParseStatusRealSample(t *testing.T) {
	f, err := os.Open("testdata/proc/status-cp")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s, err := ParseStatus(f)
	if err != nil {
		t.Fatal(err)
	}
	if s != (Status{RssAnonKB: 160, RssFileKB: 1984, VmSizeKB: 4040, VmPTEKB: 44, VmRSSKB: 2144, PidInNS: 5524}) {
		t.Fatalf("got %+v", s)
	}
	if _, err := ParseStatus(strings.NewReader("RssAnon:\tlots kB\n")); err == nil {
		t.Fatal("garbage accepted")
	}
}

func TestChoose(t *testing.T) {
	const self = 10
	mk := func(pid, score, adj int, comm string, rss uint64) Candidate {
		return Candidate{Pid: pid, Comm: comm, OOMScore: score, OOMScoreAdj: adj, Status: Status{RssAnonKB: rss}}
	}
	for _, tc := range []struct {
		name  string
		cands []Candidate
		want  int // 0: none
	}{
		{"highest score wins", []Candidate{mk(1, 100, 0, "a", 1), mk(2, 900, 0, "b", 1), mk(3, 500, 0, "c", 1)}, 2},
		{"exempt -1000 never chosen", []Candidate{mk(1, 100, 0, "a", 1), mk(2, 2000, -1000, "b", 1)}, 1},
		{"guard itself never chosen", []Candidate{mk(self, 999, 0, "oom-guard", 1), mk(3, 1, 0, "c", 1)}, 3},
		{"sandbox never chosen", []Candidate{mk(4, 999, 0, "pause", 1)}, 0},
		{"tie broken by rss", []Candidate{mk(1, 500, 0, "a", 10), mk(2, 500, 0, "b", 20)}, 2},
		{"nothing", nil, 0},
	} {
		got, ok := Choose(tc.cands, self)
		if tc.want == 0 && ok || tc.want != 0 && (!ok || got.Pid != tc.want) {
			t.Errorf("%s: got %d ok=%v, want %d", tc.name, got.Pid, ok, tc.want)
		}
	}
}

func TestScore(t *testing.T) {
	const limitKB = 64 << 10 // a 64 MiB cgroup
	for _, tc := range []struct {
		s    Status
		adj  int
		want int
	}{
		{Status{RssAnonKB: 32 << 10}, 0, 500},                     // half the limit
		{Status{RssAnonKB: 16 << 10, VmSwapKB: 16 << 10}, 0, 500}, // swap counts
		{Status{RssAnonKB: 16 << 10}, 500, 750},                   // adj adds thousandths of the limit
		{Status{RssAnonKB: 16 << 10}, -1000, -750},
	} {
		if got := Score(tc.s, tc.adj, limitKB); got != tc.want {
			t.Errorf("Score(%+v, %d) = %d, want %d", tc.s, tc.adj, got, tc.want)
		}
	}
}

func FuzzParseStat(f *testing.F) {
	for _, name := range []string{"testdata/proc/stat-cat", "testdata/proc/stat-parens"} {
		if data, err := os.ReadFile(name); err == nil {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) { _, _, _ = ParseStat(data) })
}

func FuzzParseStatus(f *testing.F) {
	if data, err := os.ReadFile("testdata/proc/status-cp"); err == nil {
		f.Add(string(data))
	}
	f.Fuzz(func(t *testing.T, s string) { _, _ = ParseStatus(strings.NewReader(s)) })
}

func TestKillPending(t *testing.T) {
	sample, err := os.ReadFile("testdata/proc/status-cp")
	if err != nil {
		t.Fatal(err)
	}
	if killPending(sample) {
		t.Fatal("a running process's status read as SIGKILL pending")
	}
	for _, line := range []string{"ShdPnd:\t0000000000000100", "SigPnd:\t0000000000000100", "ShdPnd:\t0000000000004100"} {
		dying := strings.Replace(string(sample), "ShdPnd:\t0000000000000000", line, 1)
		dying = strings.Replace(dying, "SigPnd:\t0000000000000000", line, 1)
		if !killPending([]byte(dying)) {
			t.Errorf("%q not read as SIGKILL pending", line)
		}
	}
}

// A process killed and not yet exiting shows SIGKILL pending in stat too.
func TestStatKillPending(t *testing.T) {
	// Fields after "(comm)": state is field 3, signal field 31.
	fields := make([]string, 0, 50)
	for i := 3; i <= 52; i++ {
		fields = append(fields, "0")
	}
	fields[0] = "R"
	mk := func(sig string) []byte {
		f := append([]string(nil), fields...)
		f[31-3] = sig
		return []byte("12 (a b) " + strings.Join(f, " "))
	}
	if statKillPending(mk("0")) || statKillPending(mk("255")) {
		t.Fatal("no SIGKILL pending read as pending")
	}
	if !statKillPending(mk("256")) || !statKillPending(mk("16640")) {
		t.Fatal("SIGKILL pending not seen")
	}
}
