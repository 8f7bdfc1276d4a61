package vm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/oom-guard/oom-guard/internal/testenv/vm/proto"
)

// Margins before the deadline, so that each layer gets to report before
// the next one cuts it off: first the test binary's -test.timeout (a panic
// that names the test and dumps every goroutine), then /init's SIGQUIT
// and, 3 s later, SIGKILL, and last QEMU being killed. /init counts them
// from the VM's start, so a slow boot (seconds when the host is busy:
// emulation shares its CPUs) does not push them past the deadline.
const (
	testTimeoutMargin = 15 * time.Second
	initTimeoutMargin = 8 * time.Second
	minVMTime         = 10 * time.Second // for the boot and at least a test
)

// Boot builds pkg's test binary, runs it in a VM as opts say and returns
// what came back, without reporting it (Run does). The error is for
// everything that is not a test's own result: the build, QEMU, a guest
// that crashed, timed out or ran no test; res is non-nil whenever the VM
// booted, with what it got to. Boot skips t (fails it under CI=true) when
// QEMU or the kernel is missing.
func Boot(t testing.TB, pkg string, opts Options) (res *Result, err error) {
	t.Helper()
	h := requireHost(t)
	if opts.Run == "" {
		return nil, errors.New("vm: Options.Run is empty: name the tests to run in the VM")
	}
	opts = opts.withDefaults()
	start := time.Now()
	timeout := opts.Timeout
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		// Leave the host's test binary time to report before its own
		// -timeout panics it.
		if dl, ok := d.Deadline(); ok && time.Until(dl)-5*time.Second < timeout {
			timeout = time.Until(dl) - 5*time.Second
		}
	}
	work, err := workDir(t)
	if err != nil {
		return nil, err
	}
	return h.run(work, pkg, opts, start, start.Add(timeout), hooks{})
}

// BootCommand is Boot for a program that is not a test (bench/preempt
// runs its v2 half in the VM): pkg's tests matching opts.Run run in the VM
// and the Result comes back for the caller to read; nothing is reported. A
// missing QEMU or kernel is an error that says to run scripts/vm-kernel.
func BootCommand(pkg string, opts Options) (*Result, error) {
	if InGuest() {
		return nil, errors.New("vm: already in the VM: the harness does not nest")
	}
	h, err := lookupHost()
	if err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	if opts.Run == "" {
		return nil, errors.New("vm: Options.Run is empty: name the tests to run in the VM")
	}
	opts = opts.withDefaults()
	work, err := os.MkdirTemp("", "oomguard-vm-")
	if err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	defer os.RemoveAll(work)
	start := time.Now()
	return h.run(work, pkg, opts, start, start.Add(opts.Timeout), hooks{})
}

// workDir makes the directory for one boot's files (binaries, initramfs,
// disk, serial logs), removed when the test ends. Not t.TempDir: its name
// comes from the test's, which may hold a comma, and QEMU's options take a
// comma as a separator.
func workDir(t testing.TB) (string, error) {
	dir, err := os.MkdirTemp("", "oomguard-vm-")
	if err != nil {
		return "", fmt.Errorf("vm: %w", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir, nil
}

// hooks let the package's own tests reach the layers a test binary cannot
// trigger on purpose: /init's deadline and QEMU being killed.
type hooks struct {
	config      func(*proto.Config) // edits /init's configuration
	qemuTimeout time.Duration       // kills QEMU this long after its start
}

// run is Boot once the host is known to have what it needs: it builds in
// work, boots and collects, everything before deadline.
func (h *host) run(work, pkg string, opts Options, start, deadline time.Time, hk hooks) (res *Result, err error) {
	timeout := deadline.Sub(start)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()

	p, err := h.listPackage(ctx, pkg)
	if err != nil {
		return nil, err
	}
	testBin, initBin := filepath.Join(work, p.name+".test"), filepath.Join(work, "init")
	// The two builds are independent; together they take as long as the
	// longer one.
	var initErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); initErr = h.buildInit(ctx, initBin) }()
	err = h.buildTest(ctx, p, testBin)
	wg.Wait()
	if err = errors.Join(err, initErr); err != nil {
		return nil, err
	}

	remaining := time.Until(deadline)
	if remaining-testTimeoutMargin < minVMTime {
		return nil, fmt.Errorf("vm: %v left of the %v timeout after the build is too little to boot a VM and run tests", remaining.Round(time.Second), timeout)
	}
	guestTest := path.Join(guestBin, p.name+".test")
	// The flags go test passes; -test.v=test2json is what go test -json
	// uses: framing lines marked so that test2json can tell them from a
	// test's own output.
	args := []string{guestTest, "-test.v=test2json", "-test.paniconexit0", "-test.run=" + opts.Run}
	if opts.Skip != "" {
		args = append(args, "-test.skip="+opts.Skip)
	}
	if testing.Testing() && testing.Short() {
		args = append(args, "-test.short")
	}
	args = append(args, opts.Args...)
	env := []string{"PATH=" + guestBin, "HOME=/root", "TMPDIR=/tmp", EnvGuest + "=1", EnvOut + "=" + guestOut}
	if ci, ok := os.LookupEnv("CI"); ok {
		env = append(env, "CI="+ci)
	}
	rfs := &initramfs{
		init: initBin, test: testBin,
		config: proto.Config{
			Args: args, Env: append(env, opts.Env...), Dir: guestSrc, OutDir: guestOut,
			TestTimeout: remaining - testTimeoutMargin,
			Timeout:     remaining - initTimeoutMargin,
			Controllers: opts.Controllers,
		},
	}
	if st, err := os.Stat(filepath.Join(p.dir, "testdata")); err == nil && st.IsDir() {
		rfs.testdata = filepath.Join(p.dir, "testdata")
	}
	var disk string
	var roots []string // kernel modules to load
	if opts.DiskMiB > 0 {
		if disk, err = makeDisk(ctx, work, opts.DiskMiB); err != nil {
			return nil, err
		}
		roots = append(roots, "virtio_pci", "virtio_blk", "crc32c_generic", "ext4")
		rfs.config.Disk, rfs.config.DiskMount = "/dev/vda", "/tmp"
	}
	for i, sh := range opts.Shares {
		if !path.IsAbs(sh.GuestPath) || strings.ContainsAny(sh.HostPath, ",") {
			return nil, fmt.Errorf("vm: share %+v: the guest path must be absolute and the host path hold no comma", sh)
		}
		roots = append(roots, "virtio_pci", "9pnet_virtio", "9p")
		rfs.config.Mounts = append(rfs.config.Mounts, proto.Mount{
			Source: shareTag(i), Target: sh.GuestPath, FSType: "9p", ReadOnly: true,
			// cache=loose: the share is read-only and nobody changes it
			// meanwhile, so the guest may keep what it read (executables
			// are read once, then paged from the guest's cache).
			Data: "trans=virtio,version=9p2000.L,msize=512000,cache=loose",
		})
	}
	if opts.Net != nil {
		roots = append(roots, "virtio_pci", "virtio_net")
		rfs.config.Net = &proto.Net{Interface: "eth0", Address: GuestIP + "/24"}
	}
	roots = append(roots, opts.Modules...)
	if len(roots) > 0 {
		mods, err := moduleOrder(h.kernel.modules, roots...)
		if err != nil {
			return nil, err
		}
		rfs.modules = mods
		for _, m := range mods {
			rfs.config.Modules = append(rfs.config.Modules, proto.Module{Path: path.Join(guestModules, filepath.Base(m))})
		}
	}
	if hk.config != nil {
		hk.config(&rfs.config)
	}
	initrd := filepath.Join(work, "initramfs.cpio")
	if err := rfs.write(initrd); err != nil {
		return nil, err
	}

	res = &Result{Package: p.importPath, Kernel: h.kernel.release, Build: time.Since(start)}
	if hk.qemuTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, hk.qemuTimeout)
		defer cancel()
	}
	err = h.boot(ctx, work, initrd, disk, p.importPath, opts, res)
	res.Total = time.Since(start)
	if err == nil {
		err = res.check(opts.Run)
	}
	if err != nil {
		return res, fmt.Errorf("vm: %s in %s: %w%s", p.importPath, res.Kernel, err, res.diagnostics())
	}
	return res, nil
}

// shareTag is the 9p mount tag of the i-th share.
func shareTag(i int) string { return fmt.Sprintf("share%d", i) }

// makeDisk creates a sparse disk image holding an empty ext4 file system.
func makeDisk(ctx context.Context, dir string, mib int) (string, error) {
	img := filepath.Join(dir, "disk.img")
	f, err := os.Create(img)
	if err != nil {
		return "", err
	}
	err = f.Truncate(int64(mib) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("disk image %s: %w", img, err)
	}
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return "", fmt.Errorf("Options.DiskMiB needs mkfs.ext4 (Debian's e2fsprogs): %w", err)
	}
	if b, err := exec.CommandContext(ctx, mkfs, "-q", "-F", "-m", "0", img).CombinedOutput(); err != nil {
		return "", fmt.Errorf("mkfs.ext4 %s: %w\n%s", img, err, b)
	}
	return img, nil
}

// boot runs QEMU until the guest powers off or ctx ends, and fills res.
func (h *host) boot(ctx context.Context, work, initrd, disk, importPath string, opts Options, res *Result) error {
	consoleLog := filepath.Join(work, "console.log")
	controlLog := filepath.Join(work, "control.log")
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
		"-no-reboot", "-accel", h.accel,
		"-m", strconv.Itoa(opts.MemoryMiB), "-smp", strconv.Itoa(opts.CPUs),
		"-kernel", h.kernel.image, "-initrd", initrd,
		// quiet: the console is read only when something went wrong.
		// panic=-1 with -no-reboot: a kernel panic ends QEMU at once;
		// oops=panic makes an oops one too, instead of a hang.
		"-append", "console=ttyS0 quiet panic=-1 oops=panic rdinit=/init",
		// ttyS0, ttyS1, ttyS2: see proto.ConsoleTTY and the others.
		"-serial", "file:" + consoleLog,
		"-serial", "stdio",
		"-serial", "file:" + controlLog,
	}
	if disk != "" {
		// cache=unsafe: the image is thrown away, so nothing needs to
		// reach the host's disk.
		args = append(args, "-drive", "file="+disk+",format=raw,if=virtio,cache=unsafe")
	}
	for i, sh := range opts.Shares {
		args = append(args, "-virtfs", fmt.Sprintf("local,path=%s,mount_tag=%s,security_model=none,readonly=on", sh.HostPath, shareTag(i)))
	}
	bin := h.qemu
	if n := opts.Net; n != nil {
		// restrict=off: the guest may reach HostIP, which slirp maps to
		// the loopback of QEMU's network namespace; a test confines it
		// there by running QEMU in a namespace of its own (NetNS), and
		// the guest has no route beyond 10.0.2.0/24 anyway.
		netdev := "user,id=net0,net=10.0.2.0/24,restrict=off"
		for _, f := range n.HostFwd {
			netdev += ",hostfwd=" + f
		}
		args = append(args, "-netdev", netdev, "-device", "virtio-net-pci,netdev=net0")
		if n.NetNS != "" {
			// nsenter execs QEMU in its own place (no fork without a pid
			// namespace), so the death signal below is QEMU's.
			args = append([]string{"--net=" + n.NetNS, "--", h.qemu}, args...)
			bin = "nsenter"
		}
	}
	qemu := exec.CommandContext(ctx, bin, args...)
	// If the host test binary dies (its -timeout, a SIGKILL), the kernel
	// kills QEMU with it: no VM outlives its test.
	qemu.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var qemuErr bytes.Buffer
	qemu.Stderr = &limitedBuffer{buf: &qemuErr, max: 16 << 10}

	// The guest's test output goes through the host's test2json, as
	// go test -json does, which turns it into events.
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	qemu.Stdout = pw
	// -t: only with timestamps does test2json report each test's Elapsed.
	t2j := exec.CommandContext(ctx, h.goTool, "tool", "test2json", "-t", "-p", importPath)
	t2j.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	t2j.Stdin = pr
	var t2jErr bytes.Buffer
	t2j.Stderr = &limitedBuffer{buf: &t2jErr, max: 16 << 10}
	events, err := t2j.StdoutPipe()
	if err != nil {
		pr.Close()
		pw.Close()
		return err
	}
	if err := t2j.Start(); err != nil {
		pr.Close()
		pw.Close()
		return fmt.Errorf("go tool test2json: %w", err)
	}
	pr.Close()
	booted := time.Now()
	err = qemu.Start()
	pw.Close() // test2json sees EOF when QEMU (the last writer) exits
	if err != nil {
		_ = t2j.Process.Kill()
		_ = t2j.Wait()
		return fmt.Errorf("start %s: %w", h.qemu, err)
	}

	var stream io.Writer
	if os.Getenv(EnvStream) == "1" {
		stream = os.Stderr
	}
	done := make(chan error, 1)
	go func() { done <- res.readEvents(events, booted, stream) }()
	qemuWait := qemu.Wait()
	readErr := <-done
	t2jWait := t2j.Wait()
	res.Boot = time.Since(booted)

	res.Console, _ = os.ReadFile(consoleLog)
	control, _ := os.ReadFile(controlLog)
	res.parseControl(control)
	if stream != nil {
		_, _ = stream.Write(res.Console)
	}

	switch {
	case qemuWait != nil && ctx.Err() != nil:
		return fmt.Errorf("timed out: QEMU killed after %v", time.Since(booted).Round(time.Second))
	case qemuWait != nil:
		return fmt.Errorf("%s: %w\n%s", h.qemu, qemuWait, strings.TrimSpace(qemuErr.String()))
	case readErr != nil:
		return fmt.Errorf("test2json output: %w", readErr)
	case t2jWait != nil:
		return fmt.Errorf("go tool test2json: %w\n%s", t2jWait, strings.TrimSpace(t2jErr.String()))
	}
	return nil
}

// event is one line of test2json's output (go doc test2json).
type event struct {
	Action  string
	Test    string
	Elapsed float64
	Output  string
}

// readEvents decodes test2json's events into res as they arrive.
func (res *Result) readEvents(r io.Reader, booted time.Time, stream io.Writer) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var ev event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("%q: %w", sc.Bytes(), err)
		}
		if ev.Action == "run" && res.FirstTest == 0 {
			res.FirstTest = time.Since(booted)
		}
		if stream != nil && ev.Action == "output" {
			_, _ = io.WriteString(stream, ev.Output)
		}
		res.add(ev)
	}
	// Drain whatever is left so that test2json never blocks on a full pipe.
	_, _ = io.Copy(io.Discard, r)
	return sc.Err()
}

// limitedBuffer keeps the first max bytes written to it and drops the rest,
// so that a process's stderr cannot grow without bound.
type limitedBuffer struct {
	buf *bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.buf.Len(); room > 0 {
		l.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
