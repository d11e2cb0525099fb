//go:build tools

// Pins kubectl and the node's components (kubelet, kube-proxy, kube-scheduler,
// kube-controller-manager) to the same Kubernetes release as the API server, so tests never depend
// on whichever binaries the machine happens to have. e2e/node.sh builds the node's four.
package main

import (
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
