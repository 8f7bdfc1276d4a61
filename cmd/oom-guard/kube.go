package main

import (
	"fmt"

	"k8s.io/klog/v2"

	"github.com/oom-guard/oom-guard/internal/report"
)

// newKubeEvents is the Kubernetes Events sink --kube-events asks for, or
// nil: off, or auto with no cluster known (the guard then runs as it does
// on a plain host). Nothing is contacted here: an API server that is down
// at start delays nothing, and the Events wait in a bounded queue.
func newKubeEvents(o *options, m *report.Metrics) (*report.KubeEvents, error) {
	if o.kubeEvents == "off" {
		return nil, nil
	}
	if o.kubeEvents == "auto" && o.kubeconfig == "" && !report.InCluster() {
		klog.V(2).Infof("kubernetes events: off (not in a pod, no --kubeconfig)")
		return nil, nil
	}
	client, host, err := kubeClient(o.kubeconfig)
	if err != nil {
		if o.kubeEvents == "on" {
			return nil, fmt.Errorf("--kube-events=on: %w", err)
		}
		klog.Warningf("kubernetes events: off: %v", err)
		return nil, nil
	}
	klog.Infof("kubernetes events: to %s, on pods or else on node %s", host, o.hostname)
	return report.NewKubeEvents(client, report.KubeOptions{Node: o.hostname}, m), nil
}

func kubeClient(kubeconfig string) (client report.KubeEventsClient, host string, err error) {
	cfg, err := report.KubeRESTConfig(kubeconfig)
	if err != nil {
		return nil, "", err
	}
	client, err = report.NewKubeEventsClient(cfg)
	return client, cfg.Host, err
}
