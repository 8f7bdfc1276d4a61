// Command mkimage writes oom-guard's container image as a docker-archive
// tar (what `ctr -n k8s.io images import` and `docker load` read): one
// layer holding the static binary at /oom-guard, entrypoint /oom-guard.
// Timestamps and order are fixed, so the same binary gives the same tar,
// byte for byte. scripts/image runs it; the Kubernetes end-to-end test
// builds its image with the same code.
//
//	mkimage -binary bin/oom-guard -name docker.io/library/oom-guard:dev -o bin/oom-guard-image.tar
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"

	"github.com/oom-guard/oom-guard/internal/testenv/kube"
)

func main() {
	binary := flag.String("binary", "bin/oom-guard", "the static oom-guard binary (CGO_ENABLED=0)")
	name := flag.String("name", "docker.io/library/oom-guard:dev", "image name and tag")
	out := flag.String("o", "bin/oom-guard-image.tar", "where to write the archive")
	flag.Parse()
	if err := write(*binary, *name, *out); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func write(binary, name, out string) error {
	img, err := kube.GuardImage(binary, name)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := kube.WriteArchive(&buf, img); err != nil {
		return err
	}
	return os.WriteFile(out, buf.Bytes(), 0o644)
}
