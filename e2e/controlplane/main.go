// Command controlplane runs a real kube-apiserver (from the Kubernetes Go modules) on an embedded
// etcd, on 127.0.0.1 only, for the project's end-to-end tests. It writes an admin kubeconfig and a
// state file into its run directory, then serves until SIGTERM/SIGINT.
//
// On its own (e2e/cluster.sh) there is no controller-manager, scheduler or kubelet: objects are
// stored and admitted (RBAC, webhooks, ValidatingAdmissionPolicy, ServiceAccount, TokenRequest) but
// nothing runs them. e2e/node.sh runs it inside the node's network namespace instead (--node-ip),
// beside a kubelet, and reaches it from the host through a forwarder (--public-server).
package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

// state is written to <run-dir>/cluster.json so scripts and tests can find the cluster.
type state struct {
	PID    int    `json:"pid"`
	Server string `json:"server"`
	// InternalServer is where the API server listens: the same as Server unless a forwarder
	// publishes it elsewhere (the node's components and pods use this one).
	InternalServer string `json:"internalServer"`
	// Token is the admin bearer token (system:masters), for kubeconfigs of the node's components.
	Token      string `json:"token"`
	Kubeconfig string `json:"kubeconfig"`
	CAFile     string `json:"caFile"`
	Issuer     string `json:"issuer"`
	EtcdURL    string `json:"etcdUrl"`
	Version    string `json:"kubernetesVersion"`
}

// kubernetesVersion is the pinned k8s.io/kubernetes release in go.mod; kept here for the state file.
const kubernetesVersion = "v1.37.2"

func main() {
	runDir := flag.String("run-dir", "", "directory for certificates, etcd data, kubeconfig and state (required)")
	port := flag.Int("port", 0, "secure port for kube-apiserver (0 picks a free one)")
	nodeIP := flag.String("node-ip", "", "serve on this address (all of this network namespace's addresses) and advertise it as the kubernetes Service's endpoint, for a node whose pods call the API server; empty: 127.0.0.1 only, no endpoint")
	publicServer := flag.String("public-server", "", "the URL clients outside the node's network namespace use (a forwarder's), written to the kubeconfig and used as the service-account issuer; default: the serving address")
	flag.Parse()
	if *runDir == "" {
		fmt.Fprintln(os.Stderr, "controlplane: --run-dir is required")
		os.Exit(2)
	}
	if *nodeIP != "" && (*port == 0 || *publicServer == "") {
		fmt.Fprintln(os.Stderr, "controlplane: --node-ip needs --port and --public-server")
		os.Exit(2)
	}
	if err := run(*runDir, *port, *nodeIP, *publicServer); err != nil {
		fmt.Fprintf(os.Stderr, "controlplane: %v\n", err)
		os.Exit(1)
	}
}

func run(runDir string, port int, nodeIP, publicServer string) error {
	runDir, err := filepath.Abs(runDir)
	if err != nil {
		return err
	}
	pki := filepath.Join(runDir, "pki")
	etcdDir := filepath.Join(runDir, "etcd")
	// Every start is a fresh cluster: tests never depend on leftovers from an earlier run.
	if err := os.RemoveAll(etcdDir); err != nil {
		return err
	}
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return err
	}

	if port == 0 {
		if port, err = freePort(); err != nil {
			return err
		}
	}
	etcdClientPort, err := freePort()
	if err != nil {
		return err
	}
	etcdPeerPort, err := freePort()
	if err != nil {
		return err
	}
	bindAddress, advertise, reconciler := "127.0.0.1", "127.0.0.1", "none"
	if nodeIP != "" {
		// Inside the node's own network namespace: every address there is the node's.
		bindAddress, advertise, reconciler = "0.0.0.0", nodeIP, "lease"
	}
	internal := fmt.Sprintf("https://%s:%d", advertise, port)
	server := internal
	if publicServer != "" {
		server = publicServer
	}

	if err := writePKI(pki, advertise); err != nil {
		return fmt.Errorf("generating certificates: %w", err)
	}
	adminToken, err := randomHex(32)
	if err != nil {
		return err
	}
	tokenFile := filepath.Join(pki, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(adminToken+",admin,admin-uid,system:masters\n"), 0o600); err != nil {
		return err
	}

	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdClientPort)
	etcd, err := startEtcd(etcdDir, etcdURL, fmt.Sprintf("http://127.0.0.1:%d", etcdPeerPort))
	if err != nil {
		return fmt.Errorf("starting embedded etcd: %w", err)
	}
	defer etcd.Close()

	kubeconfig := filepath.Join(runDir, "kubeconfig")
	caFile := filepath.Join(pki, "ca.crt")
	go func() {
		if err := afterReady(server, internal, caFile, adminToken, kubeconfig, runDir, etcdURL); err != nil {
			fmt.Fprintf(os.Stderr, "controlplane: post-start setup failed: %v\n", err)
			os.Exit(1)
		}
	}()

	cmd := app.NewAPIServerCommand()
	cmd.SetArgs([]string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + bindAddress,
		"--advertise-address=" + advertise,
		"--secure-port=" + strconv.Itoa(port),
		"--endpoint-reconciler-type=" + reconciler,
		"--cert-dir=" + pki,
		"--tls-cert-file=" + filepath.Join(pki, "apiserver.crt"),
		"--tls-private-key-file=" + filepath.Join(pki, "apiserver.key"),
		"--client-ca-file=" + caFile,
		"--token-auth-file=" + tokenFile,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--service-account-issuer=" + server,
		"--service-account-signing-key-file=" + filepath.Join(pki, "sa.key"),
		"--service-account-key-file=" + filepath.Join(pki, "sa.pub"),
		"--authorization-mode=RBAC",
		"--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy",
		"--allow-privileged=true",
		// kubectl logs/exec: the API server proves itself to the kubelet with a client certificate.
		"--kubelet-client-certificate=" + filepath.Join(pki, "apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + filepath.Join(pki, "apiserver-kubelet-client.key"),
		"--kubelet-preferred-address-types=InternalIP",
		"--profiling=false",
		"--v=0",
	})
	return cmd.Execute()
}

func startEtcd(dir, clientURL, peerURL string) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cu, err := url.Parse(clientURL)
	if err != nil {
		return nil, err
	}
	pu, err := url.Parse(peerURL)
	if err != nil {
		return nil, err
	}
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// A test cluster lives minutes: durability is not worth an fsync per write.
	cfg.UnsafeNoFsync = true
	cfg.LogLevel = "error"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("etcd not ready after 60s")
	}
}

// afterReady waits for /readyz, then writes the kubeconfig, lets anonymous clients read the OIDC
// discovery documents (the STS emulator fetches the keys as AWS does, without credentials), and
// finally writes the state file that tells scripts the cluster is usable.
func afterReady(server, internal, caFile, token, kubeconfigPath, runDir, etcdURL string) error {
	cfg := clientcmdConfig(server, caFile, token)
	if err := clientcmd.WriteToFile(*cfg, kubeconfigPath); err != nil {
		return err
	}
	// Waits on the serving address itself: a forwarder to it may start later.
	rest, err := clientcmd.NewDefaultClientConfig(*clientcmdConfig(internal, caFile, token), nil).ClientConfig()
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(rest)
	if err != nil {
		return err
	}
	ctx := context.Background()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && string(body) == "ok" {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kube-apiserver not ready after 3m: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "e2e:service-account-issuer-discovery:unauthenticated"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:service-account-issuer-discovery"},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: "system:unauthenticated"}},
	}
	for {
		_, err = client.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("creating discovery binding: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	st := state{PID: os.Getpid(), Server: server, InternalServer: internal, Token: token, Kubeconfig: kubeconfigPath, CAFile: caFile, Issuer: server, EtcdURL: etcdURL, Version: kubernetesVersion}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(runDir, "cluster.json.tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(runDir, "cluster.json")); err != nil {
		return err
	}
	fmt.Printf("controlplane: ready at %s (kubeconfig %s)\n", server, kubeconfigPath)
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// writePKI makes a CA, a serving certificate for 127.0.0.1/localhost (and the advertised address)
// signed by it, the client certificate the API server shows kubelets, and the service-account
// signing key pair. Regenerated on every start; nothing here is a secret worth keeping.
func writePKI(dir, advertise string) error {
	caKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "k8s-ai-operator-e2e-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	srvKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1"), net.ParseIP(advertise)},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	kubeletClientKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	kubeletClientTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(3),
		Subject:      pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	kubeletClientDER, err := x509.CreateCertificate(rand.Reader, kubeletClientTmpl, caCert, &kubeletClientKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return err
	}
	files := map[string]*pem.Block{
		"ca.crt":                       {Type: "CERTIFICATE", Bytes: caDER},
		"ca.key":                       {Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(caKey)},
		"apiserver.crt":                {Type: "CERTIFICATE", Bytes: srvDER},
		"apiserver.key":                {Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(srvKey)},
		"apiserver-kubelet-client.crt": {Type: "CERTIFICATE", Bytes: kubeletClientDER},
		"apiserver-kubelet-client.key": {Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(kubeletClientKey)},
		"sa.key":                       {Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)},
		"sa.pub":                       {Type: "PUBLIC KEY", Bytes: saPub},
	}
	for name, block := range files {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func clientcmdConfig(server, caFile, token string) *clientcmdapi.Config {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: caFile}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "admin"}
	cfg.CurrentContext = "e2e"
	return cfg
}
