// nodetest: the real node's test image ("localhost/rolegate/nodetest:1"), one static binary
// that is both the server a test's pod runs and the client a test execs in it (no shell).
//
//	nodetest                 serve on ADDR, a comma-separated list of host:port (default
//	                         127.0.0.1:8080): /healthz -> "ok", / -> a greeting
//	nodetest -get URL        print the body of a GET (exit 1 on an error or a non-200)
//	nodetest -status         print uid, gid and the CapEff, NoNewPrivs and Seccomp lines of
//	                         /proc/self/status
//	nodetest -write PATH     create PATH (exit 1, with the error, when it cannot)
package main

import (
	"bufio"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	if len(os.Args) > 1 {
		os.Exit(client(os.Args[1:]))
	}
	addr := os.Getenv("ADDR")
	if addr == "" {
		addr = "127.0.0.1:8080"
	}
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		log.Printf("%s %s from %s", r.Method, r.URL.Path, r.RemoteAddr)
		fmt.Fprintf(w, "hello from nodetest (uid %d)\n", os.Getuid())
	})
	errs := make(chan error)
	for _, a := range strings.Split(addr, ",") {
		l, err := net.Listen("tcp", a)
		if err != nil {
			log.Fatal(err)
		}
		log.Printf("listening on %s", a)
		go func() { errs <- http.Serve(l, nil) }()
	}
	log.Fatal(<-errs)
}

func client(args []string) int {
	switch {
	case args[0] == "-get" && len(args) == 2:
		c := &http.Client{Timeout: 5 * time.Second}
		r, err := c.Get(args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		fmt.Print(string(b))
		if r.StatusCode != http.StatusOK {
			fmt.Fprintln(os.Stderr, r.Status)
			return 1
		}
		return 0
	case args[0] == "-status":
		fmt.Printf("Uid: %d\nGid: %d\n", os.Getuid(), os.Getgid())
		f, err := os.Open("/proc/self/status")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer f.Close()
		s := bufio.NewScanner(f)
		for s.Scan() {
			for _, key := range []string{"CapEff:", "NoNewPrivs:", "Seccomp:"} {
				if strings.HasPrefix(s.Text(), key) {
					fmt.Println(s.Text())
				}
			}
		}
		return 0
	case args[0] == "-write" && len(args) == 2:
		if err := os.WriteFile(args[1], []byte("x"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	}
	fmt.Fprintln(os.Stderr, "usage: nodetest [-get URL | -status | -write PATH]")
	return 2
}
