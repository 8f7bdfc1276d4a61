module github.com/oom-guard/oom-guard

go 1.26.8

require (
	github.com/go-logr/logr v1.4.1 // indirect
	github.com/prometheus/client_golang v1.25.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	k8s.io/klog/v2 v2.140.0 // indirect
)
