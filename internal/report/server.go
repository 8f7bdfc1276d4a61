package report

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"k8s.io/klog/v2"
)

// Server serves GET /healthz and /metrics.
type Server struct {
	addr string
	srv  *http.Server
	ln   net.Listener
}

// NewServer prepares a server on addr (host:port). healthy decides
// /healthz: nil from it is 200 "ok", an error is 503 with its text; a nil
// healthy is always healthy.
func NewServer(addr string, m *Metrics, healthy func() error) *Server {
	if m == nil {
		m = NewMetrics()
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) {
		rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if healthy != nil {
			if err := healthy(); err != nil {
				rw.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintln(rw, err)
				return
			}
		}
		fmt.Fprintln(rw, "ok")
	})
	mux.Handle("GET /metrics", m.Handler())
	return &Server{addr: addr, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}
}

// Start listens at once, so that a busy port is Start's error, and then
// serves in the background.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.addr, err)
	}
	s.ln = ln
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.Errorf("HTTP server on %s: %v", ln.Addr(), err)
		}
	}()
	klog.V(1).Infof("serving /healthz and /metrics on %s", ln.Addr())
	return nil
}

// Addr is the address listened on once started (with the real port when
// addr asked for port 0), else the address asked for.
func (s *Server) Addr() string {
	if s.ln != nil {
		return s.ln.Addr().String()
	}
	return s.addr
}

// Shutdown stops listening and waits for requests in progress until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	return s.srv.Shutdown(ctx)
}
