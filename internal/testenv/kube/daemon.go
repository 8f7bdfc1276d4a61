package kube

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// daemon is one process of the cluster, run inside NetNS, logging to
// Dir/logs/NAME.log.
type daemon struct {
	name   string
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
	err    error // how it exited, once exited is closed
}

const daemonStopWait = 15 * time.Second

// startDaemon runs bin with args inside the namespace.
func (c *Cluster) startDaemon(name, bin string, args ...string) (*daemon, error) {
	logPath := c.path("logs", name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command("nsenter", append([]string{"--net=" + netNSPath, "--", bin}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a terminal's Ctrl-C reaches the test, which
	// then stops the daemons in order, not all at once.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &daemon{name: name, cmd: cmd, log: logPath, exited: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		close(d.exited)
	}()
	c.daemons = append(c.daemons, d)
	return d, nil
}

// stop sends SIGTERM, and SIGKILL if it has not exited in daemonStopWait.
func (d *daemon) stop() {
	select {
	case <-d.exited:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(daemonStopWait):
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
}

// waitFor polls ready until it returns nil, the daemon exits, or ctx ends.
func (d *daemon) waitFor(ctx context.Context, ready func(context.Context) error) error {
	var last error
	for {
		attempt, cancel := context.WithTimeout(ctx, 2*time.Second)
		last = ready(attempt)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-d.exited:
			return fmt.Errorf("%s exited (%v); its log:\n%s", d.name, d.err, logTail(d.log))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %v; its log:\n%s", d.name, last, logTail(d.log))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func logTail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// startStorageAndRuntime starts etcd and containerd, then imports the
// pause and busybox images while etcd gets ready.
func (c *Cluster) startStorageAndRuntime(ctx context.Context, logf func(string, ...any)) error {
	etcd, err := c.startDaemon("etcd", "etcd",
		"--name=oomguard", "--data-dir="+c.path("etcd"),
		"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=oomguard=http://127.0.0.1:2380", "--log-level=warn")
	if err != nil {
		return err
	}
	ready := func(ctx context.Context) error {
		return httpGet(ctx, nsHTTPClient(nil), "http://127.0.0.1:2379/health", "")
	}
	if c.noNode {
		return etcd.waitFor(ctx, ready)
	}
	containerd, err := c.startDaemon("containerd", "containerd", "--config="+c.path("containerd.toml"))
	if err != nil {
		return err
	}
	if err := containerd.waitFor(ctx, func(ctx context.Context) error {
		_, err := c.ctr(ctx, nil, "version")
		return err
	}); err != nil {
		return err
	}
	if err := c.importBaseImages(ctx); err != nil {
		return err
	}
	return etcd.waitFor(ctx, ready)
}

func (c *Cluster) startAPIServer(ctx context.Context, _ func(string, ...any)) error {
	pki := func(f string) string { return c.path("pki", f) }
	api, err := c.startDaemon("kube-apiserver", filepath.Join(c.Bin, "kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=0.0.0.0", fmt.Sprintf("--secure-port=%d", apiPort), "--advertise-address="+NodeIP,
		"--service-cluster-ip-range="+serviceCIDR,
		"--tls-cert-file="+pki("apiserver.crt"), "--tls-private-key-file="+pki("apiserver.key"),
		"--client-ca-file="+pki("ca.crt"), "--token-auth-file="+pki("tokens.csv"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+pki("sa.pub"), "--service-account-signing-key-file="+pki("sa.key"),
		"--authorization-mode=Node,RBAC", "--allow-privileged=true",
		// Logs and exec go to the node by its address: its name would be
		// looked up with the host's DNS, which is outside the namespace.
		"--kubelet-preferred-address-types=InternalIP",
		"--cert-dir="+c.path("pki", "apiserver-generated"),
		"--profiling=false", "--v=1")
	if err != nil {
		return err
	}
	return api.waitFor(ctx, func(ctx context.Context) error {
		return httpGet(ctx, nsHTTPClient(c.pki.caPEM), c.APIServer+"/readyz", c.pki.adminToken)
	})
}

// startNodeParts starts the controller manager, the scheduler and the
// kubelet at once; waitNodeReady waits for what they do.
func (c *Cluster) startNodeParts(context.Context, func(string, ...any)) error {
	kc := "--kubeconfig=" + c.Kubeconfig
	if _, err := c.startDaemon("kube-controller-manager", filepath.Join(c.Bin, "kube-controller-manager"), kc,
		"--service-account-private-key-file="+c.path("pki", "sa.key"), "--root-ca-file="+c.path("pki", "ca.crt"),
		"--use-service-account-credentials=false", "--leader-elect=false", "--secure-port=0",
		"--cert-dir="+c.path("pki", "controller-manager"), "--v=1"); err != nil {
		return err
	}
	if _, err := c.startDaemon("kube-scheduler", filepath.Join(c.Bin, "kube-scheduler"), kc,
		"--leader-elect=false", "--secure-port=0", "--cert-dir="+c.path("pki", "scheduler"), "--v=1"); err != nil {
		return err
	}
	if c.noNode {
		return nil
	}
	if err := c.saveSysctls(); err != nil {
		return err
	}
	_, err := c.startDaemon("kubelet", filepath.Join(c.Bin, "kubelet"),
		"--config="+c.path("kubelet.yaml"), "--kubeconfig="+c.path("kubelet.kubeconfig"),
		"--hostname-override="+NodeName, "--node-ip="+NodeIP, "--root-dir="+c.path("kubelet"), "--cert-dir="+c.path("kubelet", "pki"), "--v=1")
	return err
}

// waitNodeReady waits for the node to be Ready and for the default
// ServiceAccount, without which no pod is admitted.
func (c *Cluster) waitNodeReady(ctx context.Context, _ func(string, ...any)) error {
	client, err := c.Client()
	if err != nil {
		return err
	}
	accounts := func(ctx context.Context) error {
		for _, ns := range []string{"default", "kube-system"} {
			if _, err := client.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err != nil {
				return err
			}
		}
		return nil
	}
	if c.noNode {
		return c.daemon("kube-controller-manager").waitFor(ctx, accounts)
	}
	kubelet := c.daemon("kubelet")
	return kubelet.waitFor(ctx, func(ctx context.Context) error {
		node, err := client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		ready := false
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				ready = true
			}
		}
		if !ready {
			return fmt.Errorf("node %s not Ready", NodeName)
		}
		return accounts(ctx)
	})
}

func (c *Cluster) daemon(name string) *daemon {
	for _, d := range c.daemons {
		if d.name == name {
			return d
		}
	}
	return nil
}

// DaemonLog is the tail of a daemon's log (etcd, containerd,
// kube-apiserver, kube-controller-manager, kube-scheduler, kubelet), for a
// failing test to show.
func (c *Cluster) DaemonLog(name string) string { return logTail(c.path("logs", name+".log")) }

// httpGet fetches url with client and wants 200 OK.
func httpGet(ctx context.Context, client *http.Client, url, token string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	defer client.CloseIdleConnections()
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}
