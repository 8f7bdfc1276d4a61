// Command pause is the pod sandbox of the test cluster: it holds the pod's
// namespaces and does nothing until it is told to stop. (As a pid
// namespace's init it gets no default signal action, so it must handle
// SIGTERM itself.)
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
