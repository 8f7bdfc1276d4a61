// Command oom-guard keeps memory cgroups out of the kernel's cgroup OOM
// killer and reports every OOM. This file only wires the parts together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/cgroup"
	"github.com/oom-guard/oom-guard/internal/guard"
	"github.com/oom-guard/oom-guard/internal/kill"
	"github.com/oom-guard/oom-guard/internal/notify"
	"github.com/oom-guard/oom-guard/internal/report"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// run returns the exit status: 0 after a clean stop, 1 on a runtime
// failure, 2 on a bad command line.
func run(args []string, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "oom-guard: %v\n", err)
		return 2
	}
	mem, err := cgroup.Open(o.root)
	if err != nil {
		fmt.Fprintf(stderr, "oom-guard: --root: %v\n", err)
		return 2
	}
	defer klog.Flush()
	if err := serve(o, mem); err != nil {
		klog.Errorf("%v", err)
		return 1
	}
	return 0
}

func serve(o *options, mem cgroup.Memory) error {
	metrics := report.NewMetrics()
	sinks := []report.Sink{report.NewLog()}
	var webhook *report.Webhook
	if o.webhook != nil {
		webhook = report.NewWebhook(o.webhook, report.WebhookOptions{}, metrics)
		sinks = append(sinks, webhook)
	}
	notifier, killer, err := kernelParts(mem)
	if err != nil {
		return err
	}
	g, err := guard.New(o.guard, mem, notifier, killer, report.Fanout(sinks...), metrics)
	if err != nil {
		return err
	}
	var srv *report.Server
	if o.port > 0 {
		srv = report.NewServer(":"+strconv.Itoa(o.port), metrics, g.Healthy)
		if err := srv.Start(); err != nil {
			return fmt.Errorf("--port %d: %w", o.port, err)
		}
	}

	stop := make(chan struct{})
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sig
		klog.Infof("received %v", s)
		close(stop)
	}()
	runErr := g.Run(stop)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if srv != nil {
		_ = srv.Shutdown(ctx)
	}
	if webhook != nil {
		webhook.Stop(ctx)
	}
	return runErr
}

// kernelParts picks the notification and kill mechanisms for the hierarchy.
func kernelParts(mem cgroup.Memory) (guard.Notifier, guard.Killer, error) {
	switch mem.Version() {
	case cgroup.VersionV1:
		freezer, err := cgroup.V1Sibling(mem.FS().Root, "freezer")
		if err != nil {
			klog.Warningf("no v1 freezer (%v): the container policy kills without freezing first", err)
			freezer = nil
		}
		return notify.V1Notifier{FS: mem.FS()}, kill.Killer{Mem: mem.FS(), Freezer: freezer, Self: os.Getpid()}, nil
	default:
		return nil, nil, fmt.Errorf("cgroup %s on %s is not supported yet", mem.Version(), mem.FS().Root)
	}
}
