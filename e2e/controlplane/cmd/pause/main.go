// Command pause is the test node's sandbox image: it holds a pod's namespaces and exits on SIGTERM
// or SIGINT, as registry.k8s.io/pause does (no registry is reachable here).
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
