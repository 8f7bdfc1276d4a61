package report

import (
	"net/url"
	"strings"
	"testing"
)

func TestParseWebhookURL(t *testing.T) {
	for _, tc := range []struct {
		in, url, socket, display string
	}{
		{"http://localhost/message", "http://localhost/message", "", "http://localhost/message"},
		{"https://events.example.com:8443/oom", "https://events.example.com:8443/oom", "", "https://events.example.com:8443/oom"},
		{"HTTP://127.0.0.1:8080", "http://127.0.0.1:8080", "", "http://127.0.0.1:8080"},
		{"http://[::1]:9/x?a=b", "http://[::1]:9/x?a=b", "", "http://[::1]:9/x?a=b"},
		// A password in the URL must not reach the logs.
		{"https://user:secret@h/e", "https://user:secret@h/e", "", "https://user:xxxxx@h/e"},
		{"unix:///unix/events.sock", "http://localhost/message", "/unix/events.sock", "unix:///unix/events.sock?path=/message"},
		{"unix:///unix/events.sock?path=/v1/events", "http://localhost/v1/events", "/unix/events.sock", "unix:///unix/events.sock?path=/v1/events"},
		{"unix:///run/my%20dir/ev.sock?path=/", "http://localhost/", "/run/my dir/ev.sock", "unix:///run/my dir/ev.sock?path=/"},
		{"unix:/unix/events.sock", "http://localhost/message", "/unix/events.sock", "unix:///unix/events.sock?path=/message"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseWebhookURL(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if got.URL != tc.url || got.Socket != tc.socket || got.String() != tc.display {
				t.Errorf("got URL %q socket %q display %q, want %q %q %q", got.URL, got.Socket, got, tc.url, tc.socket, tc.display)
			}
		})
	}
}

func TestParseWebhookURLErrors(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want: part of the error
	}{
		{"", "empty"},
		{"  ", "empty"},
		{"localhost/message", "no scheme"},
		{"ftp://localhost/message", `unsupported scheme "ftp"`},
		{"mailto:ops@example.com", "unsupported scheme"},
		{"http://", "no host"},
		{"http:///message", "no host"},
		{"https://:8443/x", "no host"},
		{"http:localhost", "no host"},
		{"http://localhost:port/", "invalid port"},
		{"http://exa mple.com/", "invalid character"},
		{"http://a\nb/", "invalid control character"},
		{"%zz", "invalid URL escape"},
		{"unix://unix/events.sock", "three slashes"},
		{"unix:events.sock", "three slashes"},
		{"unix://", "empty socket path"},
		{"unix:///", "empty socket path"},
		{"unix:///unix/", "empty socket path"},
		{"unix:///a%00b.sock", "NUL"},
		{"unix:///" + strings.Repeat("s", 107), "longer than 107"},
		{"unix:///e.sock?path=message", "must start with /"},
		{"unix:///e.sock?path=/a&path=/b", "only query parameter"},
		{"unix:///e.sock?timeout=1", "only query parameter"},
		{"unix:///e.sock?path=%zz", "query"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseWebhookURL(tc.in)
			if err == nil {
				t.Fatalf("got %+v, want an error", got)
			}
			msg := err.Error()
			// main prints it after "--webhook-url: " as one line.
			if !strings.Contains(msg, tc.want) || strings.ContainsAny(msg, "\r\n") || !strings.HasPrefix(msg, "webhook URL \"") {
				t.Errorf("error %q: want one line naming the URL and saying %q", msg, tc.want)
			}
		})
	}
}

func FuzzParseWebhookURL(f *testing.F) {
	for _, s := range []string{"http://localhost/message", "https://u:p@h:1/x?y#z", "unix:///unix/events.sock?path=/message", "unix://", "%zz", "http://[::1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseWebhookURL(s)
		if err != nil {
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Errorf("error on more than one line: %q", err)
			}
			return
		}
		// Whatever is accepted must be usable as is by the webhook.
		u, err := url.Parse(got.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
			t.Errorf("%q accepted as URL %q (%v)", s, got.URL, err)
		}
		if got.Socket != "" && (got.Socket[0] != '/' || len(got.Socket) > maxSocketPath || !strings.HasPrefix(got.URL, "http://localhost/")) {
			t.Errorf("%q accepted with socket %q, URL %q", s, got.Socket, got.URL)
		}
		if got.String() == "" {
			t.Errorf("%q: empty display", s)
		}
	})
}
