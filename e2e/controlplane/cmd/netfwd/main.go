// Command netfwd forwards TCP connections between network namespaces. The test node lives in a
// network namespace of its own (e2e/node.sh): its API server must be reachable from the host's
// loopback (kubectl, tests), and the host's Bedrock emulator from the pods.
//
//	netfwd RULE...    RULE = [NETNS:]LISTEN_ADDR=[NETNS:]DIAL_ADDR
//
// NETNS is the path of a network namespace file (e.g. /run/netns/NAME); without it the address is
// in netfwd's own namespace. Example: 127.0.0.1:6443=/run/netns/node:10.200.0.2:6443. It prints
// "netfwd: ready" once every listener is bound, and runs until killed.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

type endpoint struct {
	netns string // "" for netfwd's own namespace
	addr  string
}

func parseEndpoint(s string) endpoint {
	// Addresses here are IPv4 host:port, so the last ':' before the port's is the namespace's.
	if i := strings.LastIndex(s, ":"); i > 0 {
		if j := strings.LastIndex(s[:i], ":"); j > 0 && strings.HasPrefix(s, "/") {
			return endpoint{netns: s[:j], addr: s[j+1:]}
		}
	}
	return endpoint{addr: s}
}

// inNetns runs f on an OS thread switched into netns; sockets keep the namespace they were made in.
func inNetns(netns string, f func() error) error {
	if netns == "" {
		return f()
	}
	runtime.LockOSThread()
	own, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer own.Close()
	target, err := os.Open(netns)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering %s: %w", netns, err)
	}
	ferr := f()
	if err := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread is left locked, so Go retires it instead of reusing it in the wrong namespace.
		return fmt.Errorf("returning from %s: %w", netns, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

func pipe(a, b net.Conn) {
	var wg sync.WaitGroup
	wg.Add(2)
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}
	go cp(a, b)
	go cp(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: netfwd [NETNS:]LISTEN_ADDR=[NETNS:]DIAL_ADDR ...")
		os.Exit(2)
	}
	for _, rule := range os.Args[1:] {
		from, to, ok := strings.Cut(rule, "=")
		if !ok {
			fmt.Fprintf(os.Stderr, "netfwd: %q is not LISTEN=DIAL\n", rule)
			os.Exit(2)
		}
		listen, dial := parseEndpoint(from), parseEndpoint(to)
		var l net.Listener
		if err := inNetns(listen.netns, func() (err error) {
			l, err = net.Listen("tcp", listen.addr)
			return err
		}); err != nil {
			fmt.Fprintf(os.Stderr, "netfwd: listening on %s: %v\n", from, err)
			os.Exit(1)
		}
		go func() {
			for {
				in, err := l.Accept()
				if err != nil {
					fmt.Fprintf(os.Stderr, "netfwd: accept on %s: %v\n", from, err)
					os.Exit(1)
				}
				go func() {
					var out net.Conn
					if err := inNetns(dial.netns, func() (err error) {
						out, err = net.Dial("tcp", dial.addr)
						return err
					}); err != nil {
						fmt.Fprintf(os.Stderr, "netfwd: %s -> %s: %v\n", from, to, err)
						in.Close()
						return
					}
					pipe(in, out)
				}()
			}
		}()
	}
	fmt.Println("netfwd: ready")
	select {}
}
