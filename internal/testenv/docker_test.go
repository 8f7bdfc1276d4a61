package testenv

import (
	"os"
	"strings"
	"testing"
)

func TestMain(m *testing.M) {
	code := m.Run()
	Cleanup()
	os.Exit(code)
}

// The harness gives a daemon that runs the busybox image, and removes the
// containers it ran.
func TestRequireDocker(t *testing.T) {
	d := RequireDocker(t)
	if again := RequireDocker(t); again != d {
		t.Fatal("a second RequireDocker in one process gave another daemon")
	}
	if err := pingDocker(d.Socket, 0); err != nil {
		t.Fatal(err)
	}
	img := d.BusyboxImage(t)
	if out := d.Run(t, "run", "--rm", "--network", "none", img, "sh", "-c", "echo hello from $(busybox | head -1 | cut -d' ' -f1)"); out != "hello from BusyBox" {
		t.Fatalf("container said %q", out)
	}
	var id string
	t.Run("container", func(t *testing.T) {
		id = d.RunContainer(t, "--memory", "32m", img, "sleep", "600")
		if d.Inspect(t, id, "{{.State.Running}}") != "true" {
			t.Fatal("not running")
		}
		if cg := d.CgroupV1(t, id); !strings.HasSuffix(cg, "/docker/"+id) {
			t.Fatalf("cgroup %s", cg)
		}
		if lim := d.Inspect(t, id, "{{.HostConfig.Memory}}"); lim != "33554432" {
			t.Fatalf("memory limit %s", lim)
		}
	})
	if _, err := d.run("inspect", id); err == nil {
		t.Fatalf("container %s outlived its test", id)
	}
}
