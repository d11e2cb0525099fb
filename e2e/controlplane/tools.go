//go:build tools

// Pins kubectl to the same Kubernetes release as the API server, so tests never depend on
// whichever kubectl the machine happens to have.
package main

import _ "k8s.io/kubernetes/cmd/kubectl"
