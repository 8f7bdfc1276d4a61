package kube

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// netNSPath is where `ip netns add` pins the namespace.
const netNSPath = "/var/run/netns/" + NetNS

// createNetNS makes the node's network namespace: loopback up, the node's
// address on one end of a veth pair whose other end is in the same
// namespace (the dummy link type is not available here), the Service
// address on loopback, and no route out.
func createNetNS() error {
	cmds := [][]string{
		{"netns", "add", NetNS},
		{"-n", NetNS, "link", "set", "lo", "up"},
		{"-n", NetNS, "link", "add", "ogk-node", "type", "veth", "peer", "name", "ogk-peer"},
		{"-n", NetNS, "addr", "add", nodeCIDR, "dev", "ogk-node"},
		{"-n", NetNS, "link", "set", "ogk-node", "up"},
		{"-n", NetNS, "link", "set", "ogk-peer", "up"},
		{"-n", NetNS, "addr", "add", ServiceIP + "/32", "dev", "lo"},
	}
	for _, args := range cmds {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// deleteNetNS removes the namespace; once no process holds it, its links
// (the veth pair, the CNI bridge) go with it.
func deleteNetNS() error {
	if _, err := os.Stat(netNSPath); os.IsNotExist(err) {
		return nil
	}
	if out, err := exec.Command("ip", "netns", "delete", NetNS).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns delete %s: %w: %s", NetNS, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// netNSInode identifies the namespace, to find the processes inside it.
func netNSInode() (uint64, bool) {
	var st unix.Stat_t
	if err := unix.Stat(netNSPath, &st); err != nil {
		return 0, false
	}
	return st.Ino, true
}

// DialInNetNS connects from inside the cluster's network namespace: the
// socket is made on a thread switched into the namespace, and a socket
// stays in the namespace it was made in. Only numeric addresses: a name
// would be resolved with the namespace's (absent) DNS.
func DialInNetNS(ctx context.Context, network, addr string) (net.Conn, error) {
	type result struct {
		conn net.Conn
		err  error
	}
	done := make(chan result, 1)
	go func() {
		// The thread is switched back before it is unlocked; if that
		// fails it stays locked, and Go ends it with this goroutine.
		runtime.LockOSThread()
		conn, err, restored := dialFromNetNS(ctx, network, addr)
		if restored {
			runtime.UnlockOSThread()
		}
		done <- result{conn, err}
	}()
	r := <-done
	return r.conn, r.err
}

func dialFromNetNS(ctx context.Context, network, addr string) (conn net.Conn, err error, restored bool) {
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, err, true
	}
	defer orig.Close()
	target, err := os.Open(netNSPath)
	if err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", NetNS, err), true
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("enter network namespace %s: %w", NetNS, err), true
	}
	conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
	if serr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); serr != nil {
		return conn, err, false
	}
	return conn, err, true
}

// nsHTTPClient makes its connections inside the namespace and trusts the
// cluster's CA (nil: no TLS needed, e.g. etcd's plain HTTP).
func nsHTTPClient(caPEM []byte) *http.Client {
	tr := &http.Transport{DialContext: DialInNetNS}
	if caPEM != nil {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}
