package identity

import (
	"os"
	"testing"

	"github.com/oom-guard/oom-guard/internal/testenv"
)

// TestMain releases the shared Docker daemon (and containerd, if a test
// started one) when the tests are done.
func TestMain(m *testing.M) {
	code := m.Run()
	testenv.Cleanup()
	os.Exit(code)
}
