package kube

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/oom-guard/oom-guard/internal/testenv"
)

// Image is a single-layer Linux image to be written as a docker-archive
// (the format of `docker save`, which `ctr images import` and `docker
// load` read).
type Image struct {
	Name       string   // e.g. docker.io/library/oom-guard:dev
	Layer      []byte   // the root filesystem, an uncompressed tar
	Entrypoint []string // may be empty
	Cmd        []string // may be empty
	Env        []string
}

// epoch is every timestamp in an image: the same input gives the same bytes.
var epoch = time.Unix(0, 0).UTC()

// WriteArchive writes img as a docker-archive. The output depends only on
// img: fixed timestamps, entries in a fixed order.
func WriteArchive(w io.Writer, img Image) error {
	layerSum := sha256.Sum256(img.Layer)
	diffID := "sha256:" + hex.EncodeToString(layerSum[:])
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      epoch.Format(time.RFC3339),
		"config": map[string]any{
			"Entrypoint": nonNil(img.Entrypoint),
			"Cmd":        nonNil(img.Cmd),
			"Env":        nonNil(img.Env),
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{diffID}},
		"history": []map[string]any{{"created": epoch.Format(time.RFC3339), "created_by": "oom-guard image writer"}},
	})
	if err != nil {
		return err
	}
	configSum := sha256.Sum256(config)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	layerName := hex.EncodeToString(layerSum[:]) + "/layer.tar"
	manifest, err := json.Marshal([]map[string]any{{
		"Config": configName, "RepoTags": []string{img.Name}, "Layers": []string{layerName},
	}})
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	for _, f := range []struct {
		name string
		body []byte
	}{{configName, config}, {layerName, img.Layer}, {"manifest.json", manifest}} {
		if dir := filepath.Dir(f.name); dir != "." {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
				return err
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.body)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
		if _, err := tw.Write(f.body); err != nil {
			return err
		}
	}
	return tw.Close()
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// BinaryLayer is a root filesystem holding one executable at path (e.g.
// "/oom-guard") and the directories a container runtime mounts over
// (/dev, /proc, /sys, /tmp), all with fixed owners and timestamps.
func BinaryLayer(binary, path string) ([]byte, error) {
	body, err := os.ReadFile(binary)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []struct {
		name string
		mode int64
	}{{"dev/", 0o755}, {"etc/", 0o755}, {"proc/", 0o555}, {"sys/", 0o555}, {"tmp/", 0o1777}} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d.name, Mode: d.mode, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
	}
	name := strings.TrimPrefix(path, "/")
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o755, Size: int64(len(body)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(body); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// BuildStatic builds a Go main package into a static binary (CGO off,
// paths trimmed, no VCS stamp: the same source gives the same bytes).
func BuildStatic(ctx context.Context, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w: %s", pkg, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ImportImage writes img and imports it into the cluster's containerd, in
// the namespace the kubelet uses.
func (c *Cluster) ImportImage(ctx context.Context, img Image) error {
	var buf bytes.Buffer
	if err := WriteArchive(&buf, img); err != nil {
		return fmt.Errorf("image %s: %w", img.Name, err)
	}
	if _, err := c.ctr(ctx, &buf, "images", "import", "-"); err != nil {
		return fmt.Errorf("import image %s: %w", img.Name, err)
	}
	return nil
}

// ctr runs containerd's client against the harness's containerd. Its
// socket is a path, so ctr needs no namespace switch.
func (c *Cluster) ctr(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", c.CRISocket, "--namespace", "k8s.io"}, args...)...)
	cmd.Stdin = stdin
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Ctr runs ctr (namespace k8s.io) against the cluster's containerd.
func (c *Cluster) Ctr(ctx context.Context, args ...string) (string, error) {
	return c.ctr(ctx, nil, args...)
}

// importBaseImages imports the pod sandbox image and busybox (BaseImages).
func (c *Cluster) importBaseImages(ctx context.Context) error {
	imgs, err := BaseImages(ctx, c.Dir)
	if err != nil {
		return err
	}
	for _, img := range imgs {
		if err := c.ImportImage(ctx, img); err != nil {
			return err
		}
	}
	return nil
}

// BaseImages are the images every node has: the pod sandbox (PauseImage,
// a Go program that waits for SIGTERM, built from ./pause into work) and
// BusyboxImage (Debian's busybox-static; missing: ErrMissing).
func BaseImages(ctx context.Context, work string) ([]Image, error) {
	pauseBin := filepath.Join(work, "pause")
	if err := BuildStatic(ctx, "github.com/oom-guard/oom-guard/internal/testenv/kube/pause", pauseBin); err != nil {
		return nil, err
	}
	layer, err := BinaryLayer(pauseBin, "/pause")
	if err != nil {
		return nil, err
	}
	rootfs, err := testenv.BusyboxRootfs()
	if err != nil {
		return nil, fmt.Errorf("%w: busybox: %v (apt-get install busybox-static)", ErrMissing, err)
	}
	return []Image{
		{Name: PauseImage, Layer: layer, Entrypoint: []string{"/pause"}},
		{Name: BusyboxImage, Layer: rootfs, Cmd: []string{"/bin/sh"}, Env: []string{"PATH=/bin"}},
	}, nil
}

// GuardImage is oom-guard's image: the static binary at /oom-guard (where
// the seed's DaemonSet runs it), nothing else.
func GuardImage(binary, name string) (Image, error) {
	layer, err := BinaryLayer(binary, "/oom-guard")
	if err != nil {
		return Image{}, fmt.Errorf("image %s: %w", name, err)
	}
	return Image{Name: name, Layer: layer, Entrypoint: []string{"/oom-guard"}}, nil
}
