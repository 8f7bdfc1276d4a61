// Package proto is what the host side of the VM harness (package vm) and
// the guest's /init (package vm/init) agree on: the configuration the host
// packs into the initramfs and the lines /init writes on its control port.
// It is its own tiny package so that /init, a static binary in the
// initramfs, links nothing of the harness.
package proto

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ConfigPath is where the host puts the JSON-encoded Config in the
// initramfs.
const ConfigPath = "/vm.json"

// The guest's serial ports (the PC's COM1-COM3, in the order of QEMU's
// -serial options). Each carries one kind of traffic so that nothing has to
// be told apart on the host: the kernel may print to its console at any
// moment, mid-line of a test's output.
const (
	ConsoleTTY = "/dev/ttyS0" // kernel console (console=ttyS0) and /init's own diagnostics
	OutputTTY  = "/dev/ttyS1" // the test binary's stdout and stderr, nothing else
	ControlTTY = "/dev/ttyS2" // /init's control lines, below
)

// Config tells /init what to run.
type Config struct {
	// Args is the test binary's command line; Args[0] is its path.
	Args []string
	// Env is its whole environment.
	Env []string
	// Dir is its working directory: the package directory's stand-in,
	// holding a copy of the package's testdata.
	Dir string
	// TestTimeout and Timeout are budgets counted from the VM's start
	// (/init subtracts its uptime), so that however long the boot took,
	// the host's deadline stays behind them. Each is at least a second.
	//
	// TestTimeout, if set, becomes the binary's -test.timeout, put first
	// among its flags so that Args can override it. At Timeout /init sends
	// the binary's process group SIGQUIT (a goroutine dump), and SIGKILL 3
	// s later: for a binary that hangs outside a test, ignores its own
	// timeout or sleeps uninterruptibly.
	TestTimeout, Timeout time.Duration
	// OutDir is the directory whose regular files /init sends back after the
	// test binary exits.
	OutDir string
	// Modules are kernel modules to load, dependencies first.
	Modules []Module
	// Disk, if set, is a block device holding an ext4 file system that /init
	// mounts at DiskMount before starting the test binary.
	Disk, DiskMount string
	// Controllers are enabled in the root cgroup's cgroup.subtree_control.
	Controllers []string
	// Mounts are mounted, in order, after the modules are loaded (a
	// virtio device's file system may take a moment to appear: /init
	// retries for a few seconds).
	Mounts []Mount
	// Net, if set, is an interface /init brings up with an address (and
	// no route beyond its subnet).
	Net *Net
}

// Mount is one mount(2).
type Mount struct {
	Source, Target, FSType, Data string
	ReadOnly                     bool
}

// Net is the guest's network interface.
type Net struct {
	Interface string // e.g. eth0: /init waits for it to appear
	Address   string // CIDR, e.g. 10.0.2.15/24
}

// Module is one kernel module file in the initramfs.
type Module struct {
	Path   string // e.g. /lib/modules/ext4.ko
	Params string // module parameters, "" for none
}

// Control lines: /init writes one per event to ControlTTY, "KIND ARGS\n".
// Times are the guest's uptime in seconds, so the host can tell boot time
// from test time.
const (
	Hello   = "hello"   // hello UPTIME: /init is running
	Started = "started" // started UPTIME: the test binary was started
	File    = "file"    // file NAME BASE64: a file from OutDir
	Exit    = "exit"    // exit STATUS UPTIME: the test binary's exit code, or "signal:NAME"
	Error   = "error"   // error TEXT: /init failed; it powers off next
)

// Line formats a control line.
func Line(kind string, args ...string) string {
	return kind + " " + strings.Join(args, " ") + "\n"
}

// Seconds formats an uptime for a control line.
func Seconds(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 3, 64) }

// ParseSeconds parses an uptime written by Seconds.
func ParseSeconds(s string) (time.Duration, error) {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("uptime %q: %w", s, err)
	}
	return time.Duration(f * float64(time.Second)), nil
}
