package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/guard"
	"github.com/oom-guard/oom-guard/internal/identity"
	"github.com/oom-guard/oom-guard/internal/notify"
	"github.com/oom-guard/oom-guard/internal/report"
)

// options is everything the command line sets.
type options struct {
	hostname   string // the node, in events
	root       string
	port       int
	webhookURL string
	webhook    *report.WebhookTarget
	guard      guard.Config
	nice       int // of every thread of the guard but its loop (NiceProcess)
	rtOthers   int // SCHED_RR priority of the same threads (RealtimeProcess); 0: none
	// chargingCPUs: CPUs taken to charge one v1 cgroup at once
	// (notify.V1ThresholdLag).
	chargingCPUs int
	klogFlags    *flag.FlagSet // klog's, parsed (asynclog.Klog)

	kmsgPath     string   // the kernel log; "" reads none
	kmsgFromBoot bool     // start at the oldest record, not at the end
	dockerSocket string   // "" asks no Docker daemon
	criSockets   []string // CRI runtimes to ask, in order
	// killContainerOnChildOOM: when the kernel kills a process that is not
	// its container's init, kill the whole container (v2's
	// memory.oom.group, done for v1) so the orchestrator restarts it.
	killContainerOnChildOOM bool
	runtimeTimeout          time.Duration

	// kubeEvents is --kube-events: "auto" writes Kubernetes Events when a
	// cluster is known (in a pod, or --kubeconfig), "on" requires one,
	// "off" writes none.
	kubeEvents string
	kubeconfig string // "" in a pod: the service account's credentials
}

// errUsage marks a command-line error: exit status 2.
type errUsage struct{ err error }

func (e errUsage) Error() string { return e.err.Error() }

func usageErr(format string, a ...any) error { return errUsage{fmt.Errorf(format, a...)} }

// parseFlags reads the seed DaemonSet's flags (same names, same meaning,
// same defaults; see shared/notes/product.md) and klog's.
func parseFlags(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("oom-guard", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	klog.InitFlags(fs)
	def := guard.DefaultConfig()
	o := &options{guard: def}
	var walkSec, resetSec, guardMs, recheckMs, reclaimMs int
	var minMiB, maxMiB float64
	var policy string
	fs.StringVar(&o.root, "root", "", "memory cgroup hierarchy (or sub-tree) to guard; a path relative to the memory controller's mount, or several, comma-separated, of which the first that exists (kubepods,kubepods.slice: the kubelet's pods on any node); default: this host's memory controller mount")
	fs.IntVar(&walkSec, "walkIntervalSeconds", 277, "full re-walk of the hierarchy every this many seconds (a safety net behind inotify)")
	fs.IntVar(&resetSec, "inotifyResetSeconds", 701, "re-create the inotify watches from scratch this often")
	fs.IntVar(&o.port, "port", 0, "HTTP port for /healthz and /metrics; 0 disables it")
	fs.Float64Var(&o.guard.MarginRatio, "margin-ratio", def.MarginRatio, "margin = limit x ratio, threshold = limit - margin")
	fs.Float64Var(&minMiB, "min-margin", 1, "smallest margin, MiB")
	fs.Float64Var(&maxMiB, "max-margin", 30, "largest margin, MiB")
	fs.IntVar(&guardMs, "guard-ms", 50, "after acting on a cgroup, wait this long for the memory to come back before acting on it again")
	fs.StringVar(&policy, "policy", string(def.Policy), "on a crossing: process (kill the highest oom_score), container (kill the whole container) or noop (log only)")
	fs.BoolVar(&o.guard.OpenSoftLimit, "openSoftLimit", false, "also set each guarded cgroup's soft limit at its threshold (restored on exit)")
	fs.BoolVar(&o.guard.HoldOOM, "v1-hold-oom", def.HoldOOM, "cgroup v1 (kernel 3.12+), process and container policies, with a --state-file: set oom_kill_disable in each guarded cgroup, so that a task meeting the limit before the guard has acted waits for the guard's kill instead of the kernel killing; handed back to the kernel while the guard cannot act, restored on exit; the guard then runs as the child of a keeper process that undoes the holds if the guard dies")
	fs.StringVar(&o.guard.StateFile, "state-file", DefaultStateFile, "where the soft limits, memory.high and oom_kill_disable values the guard sets are recorded with the values to restore, so that a guard started after one that died restores the operator's, not its predecessor's (keep it on the node, in a directory a reboot empties); empty keeps no record")
	fs.BoolVar(&o.guard.HighTripwire, "memory-high-tripwire", def.HighTripwire, "cgroup v2, process and container policies: put memory.high at the threshold of each guarded cgroup where it is unset, so the allocating task itself signals the crossing and waits in reclaim until the guard acts (restored on exit)")
	fs.StringVar(&o.webhookURL, "webhook-url", "http://localhost/message", "POST each event's JSON here (http://, https:// or unix:///socket/path); empty disables it")
	fs.Float64Var(&o.guard.ReclaimableRatio, "reclaimable-ratio", def.ReclaimableRatio, "stand down while reclaimable page cache is at least this fraction of the limit; 0 never stands down")
	fs.IntVar(&recheckMs, "recheck-ms", int(def.RecheckInterval/time.Millisecond), "how often a cgroup that stays above its threshold is looked at again")
	fs.IntVar(&reclaimMs, "reclaim-budget-ms", int(def.ReclaimBudget/time.Millisecond), "longest one reclaim request may take")
	fs.StringVar(&o.hostname, "hostname", "", "node name in events; default: $NODE_NAME, else the host name")
	fs.StringVar(&o.kmsgPath, "kmsg", "/dev/kmsg", "kernel log to read OOM reports from (enriches the cgroup counters, adds system OOMs); empty reads none")
	fs.BoolVar(&o.kmsgFromBoot, "kmsg-from-boot", false, "also report the OOM kills still in the kernel's log buffer from before the guard started (a restarted guard reports them again)")
	fs.StringVar(&o.dockerSocket, "docker-socket", identity.DefaultDockerSocket, "Docker Engine API socket for container names and stops; empty asks none")
	criList := fs.String("cri-sockets", identity.DefaultContainerdSocket+","+identity.DefaultCRIOSocket, "CRI runtime sockets (comma-separated) for pod and container names and stops; empty asks none")
	fs.BoolVar(&o.killContainerOnChildOOM, "kill-container-on-child-oom", false, "when the kernel OOM-kills a process that is not its container's init, kill the whole container so it is restarted")
	runtimeMs := fs.Int("runtime-timeout-ms", 500, "longest wait for a container runtime's answer")
	fs.StringVar(&o.kubeEvents, "kube-events", "auto", "write a Kubernetes Event per event, on the pod or else the node: auto (when in a pod or given --kubeconfig), on (required), off")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file for the Kubernetes Events; default: the pod's service account")
	fs.IntVar(&o.guard.RealtimePriority, "rt-priority", def.RealtimePriority, "SCHED_FIFO priority of the guard's decision loop, so a busy node cannot delay it (0: normal scheduling)")
	fs.IntVar(&o.rtOthers, "rt-others", 1, "SCHED_RR priority of the guard's other threads, below --rt-priority: the Go runtime's pauses and hand-overs, which hold the loop too, then never wait for a busy node's processes (0, or --rt-priority=0: normal scheduling at --nice)")
	fs.IntVar(&o.chargingCPUs, "v1-charging-cpus", notify.DefaultChargingCPUs, "cgroup v1: CPUs taken to charge one cgroup at once; the kernel checks thresholds only every 128 pages charged on a CPU, so every margin is at least --min-margin plus 768 KiB per such CPU")
	fs.IntVar(&o.nice, "nice", -20, "nice value of the guard's other threads, so that the Go runtime's pauses (which stop the loop too) end at once on a busy node (0: leave it)")

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return nil, err
		}
		return nil, errUsage{err}
	}
	o.klogFlags = fs
	if fs.NArg() > 0 {
		return nil, usageErr("unexpected argument %q", fs.Arg(0))
	}
	p, err := guard.ParsePolicy(policy)
	if err != nil {
		return nil, errUsage{err}
	}
	if o.chargingCPUs < 1 || o.chargingCPUs > 1024 {
		return nil, usageErr("--v1-charging-cpus must be in 1..1024, got %d", o.chargingCPUs)
	}
	if o.guard.RealtimePriority == 0 {
		o.rtOthers = 0 // never above the loop
	}
	if o.rtOthers < 0 || o.rtOthers > 0 && o.rtOthers >= o.guard.RealtimePriority {
		return nil, usageErr("--rt-others must be 0, or from 1 to below --rt-priority (%d), got %d", o.guard.RealtimePriority, o.rtOthers)
	}
	if err := guard.ValidNice(o.nice); err != nil {
		return nil, usageErr("--nice: %v", err)
	}
	o.guard.Policy = p
	for name, v := range map[string]int{"walkIntervalSeconds": walkSec, "inotifyResetSeconds": resetSec, "recheck-ms": recheckMs, "reclaim-budget-ms": reclaimMs} {
		if v <= 0 {
			return nil, usageErr("--%s must be positive, got %d", name, v)
		}
	}
	if guardMs < 0 || o.port < 0 || o.port > 65535 || minMiB < 0 || maxMiB <= 0 {
		return nil, usageErr("--guard-ms, --port, --min-margin and --max-margin must be in range (got %d, %d, %v, %v)", guardMs, o.port, minMiB, maxMiB)
	}
	switch o.kubeEvents {
	case "auto", "on", "off":
	default:
		return nil, usageErr("--kube-events must be auto, on or off, got %q", o.kubeEvents)
	}
	if *runtimeMs <= 0 {
		return nil, usageErr("--runtime-timeout-ms must be positive, got %d", *runtimeMs)
	}
	o.runtimeTimeout = time.Duration(*runtimeMs) * time.Millisecond
	for _, s := range strings.Split(*criList, ",") {
		if s = strings.TrimSpace(s); s != "" {
			o.criSockets = append(o.criSockets, s)
		}
	}
	o.guard.WalkInterval = time.Duration(walkSec) * time.Second
	o.guard.InotifyReset = time.Duration(resetSec) * time.Second
	o.guard.GuardInterval = time.Duration(guardMs) * time.Millisecond
	o.guard.RecheckInterval = time.Duration(recheckMs) * time.Millisecond
	o.guard.ReclaimBudget = time.Duration(reclaimMs) * time.Millisecond
	o.guard.MinMargin = uint64(minMiB * (1 << 20))
	o.guard.MaxMargin = uint64(maxMiB * (1 << 20))
	if err := o.guard.Validate(); err != nil {
		return nil, errUsage{err}
	}
	if o.webhookURL != "" {
		if o.webhook, err = report.ParseWebhookURL(o.webhookURL); err != nil {
			return nil, usageErr("--webhook-url: %v", err)
		}
	}
	if o.root == "" {
		if o.root, err = cgroup.DefaultMemoryRoot(); err != nil {
			return nil, usageErr("--root not given and %v", err)
		}
	} else if o.root, err = resolveRoot(o.root, cgroup.DefaultMemoryRoot, isDir); err != nil {
		return nil, usageErr("--root: %v", err)
	}
	if o.hostname == "" {
		o.hostname = os.Getenv("NODE_NAME")
	}
	if o.hostname == "" {
		o.hostname, _ = os.Hostname()
	}
	o.root = strings.TrimSuffix(o.root, "/")
	if o.root == "" {
		o.root = "/"
	}
	return o, nil
}

// resolveRoot reads --root: one path or several, comma-separated, each
// absolute or relative to the memory controller's mount (mount). Of several,
// the first that is a directory wins, so that one manifest serves every
// node: the kubelet's pods are under kubepods (cgroupfs driver) or
// kubepods.slice (systemd driver), below /sys/fs/cgroup/memory on v1 and
// /sys/fs/cgroup on v2. One path is taken as it is, for cgroup.Open to
// check.
func resolveRoot(spec string, mount func() (string, error), isDir func(string) bool) (string, error) {
	var paths []string
	for _, p := range strings.Split(spec, ",") {
		if p = strings.TrimSpace(p); p == "" {
			return "", fmt.Errorf("empty path in %q", spec)
		}
		if !filepath.IsAbs(p) {
			m, err := mount()
			if err != nil {
				return "", fmt.Errorf("%s is relative to the memory controller's mount: %w", p, err)
			}
			p = filepath.Join(m, p)
		}
		paths = append(paths, p)
	}
	if len(paths) == 1 {
		return paths[0], nil
	}
	for _, p := range paths {
		if isDir(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("none of %s exists", strings.Join(paths, ", "))
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// DefaultStateFile is --state-file's default: on the node's /run (the
// DaemonSet mounts it), which a reboot empties along with every cgroup.
const DefaultStateFile = "/run/oom-guard/soft-limits.jsonl"
