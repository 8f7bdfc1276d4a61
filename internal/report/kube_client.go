package report

import (
	"fmt"
	"os"
	"time"

	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// kubeRequestTimeout bounds one request to the API server, so that a server
// that accepts connections and never answers holds the Event writer (never
// the guard) for at most this long per attempt.
const kubeRequestTimeout = 10 * time.Second

// InCluster reports whether this process runs in a Kubernetes pod with the
// API server's address in its environment (what rest.InClusterConfig
// needs besides the service account's files).
func InCluster() bool {
	return os.Getenv("KUBERNETES_SERVICE_HOST") != "" && os.Getenv("KUBERNETES_SERVICE_PORT") != ""
}

// KubeRESTConfig is how to reach the API server: from the kubeconfig file
// when one is named, else from the pod's service account (in-cluster).
// Nothing is contacted.
func KubeRESTConfig(kubeconfig string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
	} else {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster config: %w", err)
		}
	}
	cfg.UserAgent = KubeComponent
	if cfg.Timeout == 0 || cfg.Timeout > kubeRequestTimeout {
		cfg.Timeout = kubeRequestTimeout
	}
	return cfg, nil
}

// KubeEventsClient is what the Events sink writes with (a clientset's CoreV1()).
type KubeEventsClient = typedcorev1.EventsGetter

// NewKubeEventsClient is the core/v1 client the Events sink writes with.
func NewKubeEventsClient(cfg *rest.Config) (KubeEventsClient, error) {
	c, err := typedcorev1.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", cfg.Host, err)
	}
	return c, nil
}
