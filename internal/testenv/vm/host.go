package vm

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/oom-guard/oom-guard/internal/testenv"
)

// initPkg is the guest's /init.
const initPkg = "github.com/oom-guard/oom-guard/internal/testenv/vm/init"

const qemuBinary = "qemu-system-x86_64"

// kernel is the guest kernel: its image and, beside it as scripts/vm-kernel
// unpacks it, the few modules kept for the virtual disk.
type kernel struct {
	image   string // .../boot/vmlinux-6.1.0-56-amd64 (or vmlinuz-)
	release string // 6.1.0-56-amd64
	modules string // .../lib/modules/6.1.0-56-amd64/kernel
}

// host is what the host needs to boot a VM, looked up once per process.
type host struct {
	qemu, goTool string
	kernel       kernel
	accel        string
}

var lookupHost = sync.OnceValues(func() (*host, error) {
	h := &host{}
	var err error
	if runtime.GOARCH != "amd64" {
		return nil, fmt.Errorf("the VM harness boots an amd64 kernel; this is %s", runtime.GOARCH)
	}
	if h.qemu, err = exec.LookPath(qemuBinary); err != nil {
		return nil, fmt.Errorf("%s not found (%v): run scripts/vm-kernel as root", qemuBinary, err)
	}
	if h.kernel, err = findKernel(); err != nil {
		return nil, err
	}
	// go test puts its own GOROOT/bin first in the test's PATH.
	if h.goTool, err = exec.LookPath("go"); err != nil {
		h.goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(h.goTool); err != nil {
			return nil, fmt.Errorf("the go command is needed to build the VM's test binary: %w", err)
		}
	}
	h.accel = accel()
	return h, nil
})

func findKernel() (kernel, error) {
	image := os.Getenv(EnvKernel)
	if image == "" {
		cache := os.Getenv(EnvCache)
		if cache == "" {
			cache = DefaultCache
		}
		image = filepath.Join(cache, "kernel")
	}
	resolved, err := filepath.EvalSymlinks(image)
	if err != nil {
		return kernel{}, fmt.Errorf("no VM kernel at %s (%v): run scripts/vm-kernel as root", image, err)
	}
	if f, err := os.Open(resolved); err != nil {
		return kernel{}, fmt.Errorf("VM kernel %s: %w", resolved, err)
	} else {
		f.Close()
	}
	// vmlinux-RELEASE (uncompressed, booted as PVH) or vmlinuz-RELEASE.
	base := filepath.Base(resolved)
	k := kernel{image: resolved, release: strings.TrimPrefix(strings.TrimPrefix(base, "vmlinux-"), "vmlinuz-")}
	k.modules = filepath.Join(filepath.Dir(filepath.Dir(resolved)), "lib", "modules", k.release, "kernel")
	return k, nil
}

// accel picks QEMU's accelerator: emulation (TCG) unless EnvAccel says
// otherwise. Not KVM by default, even where /dev/kvm opens: on this
// project's machines it opens, but a guest under it hangs before its first
// console line (or QEMU aborts with -cpu host), and QEMU cannot detect that
// to fall back to TCG.
func accel() string {
	if a := os.Getenv(EnvAccel); a != "" {
		return a
	}
	return "tcg"
}

// requireHost returns the host's tools, or skips t (fails it on CI).
func requireHost(t testing.TB) *host {
	t.Helper()
	if InGuest() {
		t.Skip("already in the VM: the harness does not nest")
	}
	h, err := lookupHost()
	if err != nil {
		testenv.Skip(t, "cgroup v2 VM tests: "+err.Error())
	}
	return h
}

// goPackage is the package under test, as go list names it.
type goPackage struct {
	importPath, dir, name string
}

func (h *host) listPackage(ctx context.Context, pkg string) (goPackage, error) {
	out, err := h.goCmd(ctx, "list", "-f", "{{.ImportPath}}\n{{.Dir}}\n{{.Name}}", pkg).Output()
	if err != nil {
		return goPackage{}, fmt.Errorf("go list %s: %w%s", pkg, err, stderrOf(err))
	}
	f := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(f) != 3 {
		return goPackage{}, fmt.Errorf("go list %s: want one package, got %q", pkg, out)
	}
	return goPackage{importPath: f[0], dir: f[1], name: f[2]}, nil
}

// buildTest builds pkg's test binary, static, into out.
func (h *host) buildTest(ctx context.Context, pkg goPackage, out string) error {
	// -vet=off: the host's go test has vetted the package already.
	cmd := h.goCmd(ctx, "test", "-c", "-vet=off", "-o", out, pkg.importPath)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go test -c %s: %w\n%s", pkg.importPath, err, b)
	}
	if _, err := os.Stat(out); err != nil {
		// go test -c writes nothing for a package without test files.
		return fmt.Errorf("go test -c %s: no test binary: %w", pkg.importPath, err)
	}
	return checkStatic(out)
}

// buildInit builds the guest's /init into out.
func (h *host) buildInit(ctx context.Context, out string) error {
	if b, err := h.goCmd(ctx, "build", "-o", out, initPkg).CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", initPkg, err, b)
	}
	return checkStatic(out)
}

// goCmd runs the go command for the guest: linux/amd64 without cgo, so
// that the binaries need no libc, which the initramfs does not have.
func (h *host) goCmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, h.goTool, args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	return cmd
}

// checkStatic fails for a dynamically linked binary: with cgo off Go
// links statically, but a -linkmode=external in GOFLAGS would not.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; the VM has no libc (is GOFLAGS setting -linkmode=external?)", path)
		}
	}
	return nil
}

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return "\n" + string(bytes.TrimSpace(ee.Stderr))
	}
	return ""
}
