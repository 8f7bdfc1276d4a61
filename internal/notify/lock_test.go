package notify

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/cgroup"
)

// The loop's Sample never waits for a registration that is inside a
// system call: registrations run on normal-priority goroutines, which the
// scheduler may hold off their CPU, and the loop is real-time. The
// registration here is held in open(2) of a FIFO standing in for
// memory.current, something no real cgroup file can be made to do on
// demand. Sample used to wait on the notifier's mutex for as long.
func TestSampleDoesNotWaitForARegistration(t *testing.T) {
	root := t.TempDir()
	fifo := filepath.Join(root, "slow", "memory.current")
	if err := os.Mkdir(filepath.Dir(fifo), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	opts := DefaultV2Options()
	opts.GrowthFloor = 1 << 30
	n, err := NewV2Notifier(&cgroup.FS{Root: root}, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()

	registered := make(chan error, 1)
	go func() {
		w, err := n.Threshold("/slow", 1<<20)
		if err == nil {
			w.Close()
		}
		registered <- err
	}()
	// Let the registration reach open(2) of the FIFO, where it blocks
	// until a writer comes.
	deadline := time.Now().Add(5 * time.Second)
	for !blockedInFifoOpen(t) {
		if time.Now().After(deadline) {
			t.Fatal("the registration never reached open(2) of the FIFO")
		}
		time.Sleep(time.Millisecond)
	}
	sampled := make(chan struct{})
	go func() { n.Sample(); close(sampled) }()
	select {
	case <-sampled:
	case <-time.After(time.Second):
		t.Error("Sample waited more than 1s for a registration blocked in a system call")
	}
	// Release the registration: it fails (a FIFO cannot be pread).
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := <-registered; err == nil {
		t.Error("a FIFO registered as memory.current")
	}
	<-sampled
}

// blockedInFifoOpen tells whether a thread of this process sleeps in
// open(2) of a FIFO (wchan wait_for_partner).
func blockedInFifoOpen(t *testing.T) bool {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		wchan, err := os.ReadFile("/proc/self/task/" + task.Name() + "/wchan")
		if err == nil && string(wchan) == "wait_for_partner" {
			return true
		}
	}
	return false
}
