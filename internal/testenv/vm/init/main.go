// Command init is /init in the VM harness's initramfs (see package vm): the
// guest's PID 1. It mounts the kernel file systems, enables cgroup v2
// controllers, runs one Go test binary with its output on the output serial
// port, sends back the files the tests left in the out directory and the
// binary's exit status on the control port, and powers the VM off.
//
// It is built static (CGO_ENABLED=0) and needs nothing else in the
// initramfs. Whatever goes wrong, it reports on the control port and powers
// off rather than exit: PID 1 exiting panics the kernel, which the host
// would see only as a crash.
package main

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/testenv/vm/proto"
)

// control is the control port, nil until opened.
var control *os.File

func main() {
	defer func() {
		if r := recover(); r != nil {
			fail(fmt.Errorf("panic: %v", r))
		}
	}()
	if err := run(); err != nil {
		fail(err)
	}
	powerOff()
}

func run() error {
	if err := mountAll(); err != nil {
		return err
	}
	out, err := openRaw(proto.OutputTTY)
	if err != nil {
		return err
	}
	if control, err = openRaw(proto.ControlTTY); err != nil {
		return err
	}
	send(proto.Hello, proto.Seconds(uptime()))

	cfg, err := readConfig()
	if err != nil {
		return err
	}
	if err := enableControllers(cfg.Controllers); err != nil {
		return err
	}
	for _, m := range cfg.Modules {
		if err := loadModule(m); err != nil {
			return err
		}
	}
	if cfg.Disk != "" {
		if err := mountDisk(cfg.Disk, cfg.DiskMount); err != nil {
			return err
		}
	}
	for _, m := range cfg.Mounts {
		if err := mountRetry(m); err != nil {
			return err
		}
	}
	// Tests that serve HTTP on 127.0.0.1 need the loopback device up; the
	// kernel gives it its address when it comes up.
	if err := loopbackUp(); err != nil {
		return err
	}
	if cfg.Net != nil {
		if err := netUp(cfg.Net); err != nil {
			return err
		}
	}

	status, err := runTest(cfg, out)
	if err != nil {
		return err
	}
	// Hogs or servers a test left behind would only slow the power-off
	// (the kernel kills them anyway); end them so the file system is quiet
	// while the out directory is read.
	_ = unix.Kill(-1, unix.SIGKILL)
	reapAll()
	drain(out)
	if err := sendFiles(cfg.OutDir); err != nil {
		return err
	}
	send(proto.Exit, status, proto.Seconds(uptime()))
	return nil
}

// mountAll mounts what a test binary (and the kernel interfaces under test)
// expect: /proc, /sys, /dev and cgroup2 at /sys/fs/cgroup, as on a
// unified-hierarchy distribution.
func mountAll() error {
	const nosuid = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	for _, m := range []struct {
		fstype, target string
		flags          uintptr
	}{
		{"devtmpfs", "/dev", unix.MS_NOSUID},
		{"proc", "/proc", nosuid},
		{"sysfs", "/sys", nosuid},
		{"cgroup2", "/sys/fs/cgroup", nosuid},
	} {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", m.target, err)
		}
		if err := unix.Mount(m.fstype, m.target, m.fstype, m.flags, ""); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	return nil
}

// openRaw opens a serial port in raw mode: no \n to \r\n translation, no
// echo, every byte passed as it is.
func openRaw(name string) (*os.File, error) {
	f, err := os.OpenFile(name, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	fd := int(f.Fd())
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: get termios: %w", name, err)
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: set termios: %w", name, err)
	}
	return f, nil
}

func readConfig() (*proto.Config, error) {
	data, err := os.ReadFile(proto.ConfigPath)
	if err != nil {
		return nil, err
	}
	var cfg proto.Config
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", proto.ConfigPath, err)
	}
	if len(cfg.Args) == 0 {
		return nil, fmt.Errorf("%s: no Args", proto.ConfigPath)
	}
	return &cfg, nil
}

func enableControllers(names []string) error {
	const file = "/sys/fs/cgroup/cgroup.subtree_control"
	for _, c := range names {
		// One controller per write, so an error names the one refused.
		if err := os.WriteFile(file, []byte("+"+c), 0); err != nil {
			return fmt.Errorf("enable %s in %s: %w", c, file, err)
		}
	}
	return nil
}

func loadModule(m proto.Module) error {
	f, err := os.Open(m.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), m.Params, 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: %w", m.Path, err)
	}
	return nil
}

func mountDisk(dev, dir string) error {
	if err := os.MkdirAll(dir, 0o1777); err != nil {
		return fmt.Errorf("mkdir %s: %w", dir, err)
	}
	// The device node appears when the driver has probed the disk, which
	// module loading does not wait for.
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if err = unix.Mount(dev, dir, "ext4", 0, ""); !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENXIO) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("mount %s on %s: %w", dev, dir, err)
	}
	return os.Chmod(dir, 0o1777)
}

func loopbackUp() error { return linkUp("lo") }

func linkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: socket: %w", name, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("%s: get flags: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("%s: set up: %w", name, err)
	}
	return nil
}

// mountRetry mounts m, waiting up to 10 s for its source to appear (a
// virtio device is probed after its driver's module is loaded).
func mountRetry(m proto.Mount) error {
	if err := os.MkdirAll(m.Target, 0o755); err != nil {
		return fmt.Errorf("mkdir %s: %w", m.Target, err)
	}
	var flags uintptr
	if m.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if err = unix.Mount(m.Source, m.Target, m.FSType, flags, m.Data); !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENXIO) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", m.Source, m.FSType, m.Target, err)
	}
	return nil
}

// netUp gives the interface its address (the kernel adds the route to its
// subnet, and no other) and brings it up, once its driver has made it.
func netUp(n *proto.Net) error {
	ip, ipnet, err := net.ParseCIDR(n.Address)
	if err != nil || ip.To4() == nil {
		return fmt.Errorf("interface %s: address %q: want an IPv4 CIDR (%v)", n.Interface, n.Address, err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: socket: %w", n.Interface, err)
	}
	defer unix.Close(fd)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err = net.InterfaceByName(n.Interface); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("interface %s never appeared: %w", n.Interface, err)
		}
	}
	for _, set := range []struct {
		req  uint
		addr net.IP
	}{{unix.SIOCSIFADDR, ip.To4()}, {unix.SIOCSIFNETMASK, net.IP(ipnet.Mask).To4()}} {
		ifr, err := unix.NewIfreq(n.Interface)
		if err != nil {
			return err
		}
		if err := ifr.SetInet4Addr(set.addr); err != nil {
			return err
		}
		if err := unix.IoctlIfreq(fd, set.req, ifr); err != nil {
			return fmt.Errorf("%s: set %v: %w", n.Interface, set.addr, err)
		}
	}
	return linkUp(n.Interface)
}

// runTest runs the test binary in its own process group, with stdout and
// stderr on the output port, and returns its exit status as the Exit
// control line gives it. As PID 1, init also inherits every orphan, so it
// reaps with wait4(-1) until the binary itself exits.
func runTest(cfg *proto.Config, out *os.File) (string, error) {
	null, err := os.Open(os.DevNull)
	if err != nil {
		return "", err
	}
	defer null.Close()
	// What the boot took comes out of the budgets.
	budget := func(d time.Duration) time.Duration { return max(d-uptime(), time.Second) }
	args := cfg.Args
	if cfg.TestTimeout > 0 {
		args = slices.Insert(slices.Clone(args), 1, "-test.timeout="+budget(cfg.TestTimeout).String())
	}
	p, err := os.StartProcess(args[0], args, &os.ProcAttr{
		Dir:   cfg.Dir,
		Env:   cfg.Env,
		Files: []*os.File{null, out, out},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	})
	if err != nil {
		return "", fmt.Errorf("start %s: %w", cfg.Args[0], err)
	}
	send(proto.Started, proto.Seconds(uptime()))
	if cfg.Timeout > 0 {
		pid, limit := p.Pid, budget(cfg.Timeout)
		quit := time.AfterFunc(limit, func() {
			fmt.Fprintf(os.Stderr, "init: %s still running after %v: SIGQUIT, then SIGKILL\n", args[0], limit.Round(time.Millisecond))
			_ = unix.Kill(-pid, unix.SIGQUIT)
			time.Sleep(3 * time.Second)
			_ = unix.Kill(-pid, unix.SIGKILL)
		})
		defer quit.Stop()
	}
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("wait for %s: %w", cfg.Args[0], err)
		}
		if pid != p.Pid {
			continue // an orphan reparented to init
		}
		if ws.Signaled() {
			return "signal:" + unix.SignalName(ws.Signal()), nil
		}
		return strconv.Itoa(ws.ExitStatus()), nil
	}
}

// reapAll waits for every remaining child; kill(-1) has been sent.
func reapAll() {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		var ws unix.WaitStatus
		_, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.ECHILD) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sendFiles sends each regular file of dir as one control line.
func sendFiles(dir string) error {
	if dir == "" {
		return nil
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return err
		}
		send(proto.File, e.Name(), base64.StdEncoding.EncodeToString(data))
	}
	return nil
}

// send writes a control line. A failure to write is only logged: the host
// then sees the VM end without an exit line and reports the console.
func send(kind string, args ...string) {
	if control == nil {
		return
	}
	if _, err := control.WriteString(proto.Line(kind, args...)); err != nil {
		fmt.Fprintln(os.Stderr, "init: control port:", err)
	}
}

// drain waits until the serial port has sent everything written to it: the
// power-off would otherwise cut the tail of the output.
func drain(f *os.File) {
	if f != nil {
		_ = unix.IoctlSetInt(int(f.Fd()), unix.TCSBRK, 1)
	}
}

func fail(err error) {
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	fmt.Fprintln(os.Stderr, "init:", msg)
	send(proto.Error, msg)
	powerOff()
}

// powerOff ends the VM (QEMU exits). It never returns: if the kernel
// refuses, the host's timeout ends QEMU.
func powerOff() {
	drain(control)
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Fprintln(os.Stderr, "init: power off:", err)
	}
	for {
		time.Sleep(time.Hour)
	}
}

func uptime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}
