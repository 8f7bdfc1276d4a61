package kmsg

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseRecord(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Record
	}{
		// The examples of Documentation/ABI/testing/dev-kmsg.
		{"7,160,424069,-;pci_root PNP0A03:00: host bridge window [io  0x0000-0x0cf7] (ignored)\n SUBSYSTEM=acpi\n DEVICE=+acpi:PNP0A03:00\n",
			Record{Facility: 0, Level: 7, Seq: 160, Monotonic: 424069 * time.Microsecond, Flag: '-',
				Text: "pci_root PNP0A03:00: host bridge window [io  0x0000-0x0cf7] (ignored)",
				Dict: map[string]string{"SUBSYSTEM": "acpi", "DEVICE": "+acpi:PNP0A03:00"}}},
		{"6,339,5140900,-;NET: Registered protocol family 10\n",
			Record{Level: 6, Seq: 339, Monotonic: 5140900 * time.Microsecond, Flag: '-', Text: "NET: Registered protocol family 10"}},
		{"30,340,5690716,-;udevd[80]: starting version 181\n",
			Record{Facility: 3, Level: 6, Seq: 340, Monotonic: 5690716 * time.Microsecond, Flag: '-', Text: "udevd[80]: starting version 181"}},
		// CONFIG_PRINTK_CALLER adds a field; fragments carry 'c' or '+'.
		{"6,1143,37123371,c,caller=T9185;oom-kill:constraint=CONSTRAINT_NONE\n",
			Record{Level: 6, Seq: 1143, Monotonic: 37123371 * time.Microsecond, Flag: 'c', Text: "oom-kill:constraint=CONSTRAINT_NONE"}},
		// Escapes: a backslash is always escaped, so "\x5cx41" is a literal "\x41".
		{`3,5,6,-;Killed process 7 (a\x5cx41\x0a\xe2\x9c\x93) total-vm:1kB` + "\n",
			Record{Level: 3, Seq: 5, Monotonic: 6 * time.Microsecond, Flag: '-', Text: "Killed process 7 (a\\x41\n\u2713) total-vm:1kB"}},
		// A stray backslash or a short escape is kept, not rejected.
		{`6,1,1,-;a\ b\x4 \xZZ\` + "\n", Record{Level: 6, Seq: 1, Monotonic: time.Microsecond, Flag: '-', Text: `a\ b\x4 \xZZ\`}},
		// No trailing newline, a message with ';' and an empty flag field.
		{"6,2,3,;a;b", Record{Level: 6, Seq: 2, Monotonic: 3 * time.Microsecond, Flag: '-', Text: "a;b"}},
		// A message that starts with a space is text, not a dictionary line.
		{"4,591,998783012,-; <TASK>\n", Record{Level: 4, Seq: 591, Monotonic: 998783012 * time.Microsecond, Flag: '-', Text: " <TASK>"}},
	} {
		got, err := ParseRecord([]byte(tc.in))
		if err != nil {
			t.Errorf("ParseRecord(%q): %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseRecord(%q):\n got %+v\nwant %+v", tc.in, got, tc.want)
		}
	}
}

func TestParseRecordMalformed(t *testing.T) {
	for _, in := range []string{
		"",
		"garbage",
		"Killed process 1 (x) total-vm:1kB",
		"6,1,2;too few fields",
		"x,1,2,-;bad priority",
		"6,-1,2,-;bad seq",
		"6,1,99999999999999999999,-;timestamp overflow",
		"6,1,18446744073709551615,-;timestamp overflows a Duration",
		"6,1,2,-" + strings.Repeat("x", 300) + ";header too long",
	} {
		if r, err := ParseRecord([]byte(in)); err == nil {
			t.Errorf("ParseRecord(%q) = %+v, want an error", in, r)
		} else if !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseRecord(%q): error %v does not wrap ErrMalformed", in, err)
		}
	}
}
