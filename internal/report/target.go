package report

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// DefaultUnixPath is the HTTP path POSTed to over a unix socket when the
// URL names none: the seed's event writer takes events at /message.
const DefaultUnixPath = "/message"

// maxSocketPath is what fits in Linux's sockaddr_un.sun_path with its NUL.
const maxSocketPath = 107

// WebhookTarget is where events are POSTed.
type WebhookTarget struct {
	// URL is the request URL. Over a unix socket its host is "localhost"
	// and only its path matters.
	URL string
	// Socket is the unix socket's path, or "" for TCP.
	Socket string
	// display is the target for logs and errors, without any password.
	display string
}

func (t *WebhookTarget) String() string { return t.display }

// ParseWebhookURL checks a --webhook-url value. It takes
//
//	http://host[:port]/path and https://host[:port]/path
//	unix:///absolute/socket/path[?path=/http/path]
//
// The unix form is the seed DaemonSet's sidecar on the shared emptyDir,
// e.g. unix:///unix/events.sock; its HTTP path defaults to /message.
func ParseWebhookURL(s string) (*WebhookTarget, error) {
	t, err := parseTarget(s)
	if err != nil {
		return nil, fmt.Errorf("webhook URL %q: %w", s, err)
	}
	return t, nil
}

func parseTarget(s string) (*WebhookTarget, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("empty")
	}
	u, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL itself is already in our message
		}
		return nil, err
	}
	switch u.Scheme {
	case "http", "https":
		if u.Hostname() == "" {
			return nil, errors.New("no host")
		}
		return &WebhookTarget{URL: u.String(), display: u.Redacted()}, nil
	case "unix":
		return parseUnix(u)
	case "":
		return nil, errors.New("no scheme (want http://, https:// or unix://)")
	default:
		return nil, fmt.Errorf("unsupported scheme %q (want http, https or unix)", u.Scheme)
	}
}

func parseUnix(u *url.URL) (*WebhookTarget, error) {
	if u.Opaque != "" || u.Host != "" || u.User != nil {
		return nil, errors.New("a unix socket URL is unix:///absolute/path (three slashes, no host)")
	}
	sock := u.Path
	switch {
	case sock == "" || strings.HasSuffix(sock, "/"):
		return nil, errors.New("empty socket path")
	case len(sock) > maxSocketPath:
		return nil, fmt.Errorf("socket path %q is longer than %d bytes", sock, maxSocketPath)
	case strings.ContainsRune(sock, 0):
		return nil, fmt.Errorf("socket path %q contains a NUL byte", sock)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("query: %w", err)
	}
	path := DefaultUnixPath
	if len(q) > 0 {
		v, ok := q["path"]
		if !ok || len(q) > 1 || len(v) != 1 {
			return nil, errors.New("the only query parameter allowed is one path=")
		}
		path = v[0]
	}
	if !strings.HasPrefix(path, "/") {
		return nil, fmt.Errorf("HTTP path %q must start with /", path)
	}
	req, err := url.Parse("http://localhost" + path)
	if err != nil {
		return nil, fmt.Errorf("HTTP path %q: %w", path, err)
	}
	return &WebhookTarget{URL: req.String(), Socket: sock, display: "unix://" + sock + "?path=" + path}, nil
}
