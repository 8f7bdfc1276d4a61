package report

import (
	"os"
	"strings"
	"sync"
	"time"

	"github.com/oom-guard/oom-guard/internal/event"
)

// Series per pod are bounded: at most maxPods pods have series of their
// own (more are folded into the unlabelled series, and counted), and the
// series of a pod whose cgroup has been gone for podGrace are deleted. A
// pod's counts outlive its containers' restarts: they are labelled by
// names, not by container IDs, and kept while the pod's cgroup exists.
const (
	maxPods  = 2000
	podGrace = 10 * time.Minute
)

type pod struct{ namespace, name string }

type podState struct {
	cgroup    string    // the pod's cgroup directory; "" if not known
	goneSince time.Time // zero while the cgroup exists
}

// workloads tracks the pods that have series.
type workloads struct {
	max   int
	grace time.Duration
	mu    sync.Mutex
	pods  map[pod]*podState
	// exists is os.Stat, replaceable in tests.
	exists func(path string) bool
}

func newWorkloads(max int, grace time.Duration) *workloads {
	return &workloads{max: max, grace: grace, pods: map[pod]*podState{}, exists: func(p string) bool {
		_, err := os.Stat(p)
		return err == nil || !os.IsNotExist(err)
	}}
}

// labels are ev's namespace, pod and container labels, and whether they
// had to be folded away (too many pods).
func (w *workloads) labels(ev event.Event) (labels []string, folded bool) {
	if ev.PodName == "" {
		return []string{"", "", ""}, false
	}
	key := pod{ev.PodNamespace, ev.PodName}
	w.mu.Lock()
	defer w.mu.Unlock()
	st, ok := w.pods[key]
	if !ok {
		if len(w.pods) >= w.max {
			return []string{"", "", ""}, true
		}
		st = &podState{}
		w.pods[key] = st
	}
	if dir := podCgroup(ev.ProcCgroup, ev.PodUID); dir != "" {
		st.cgroup = dir
	}
	st.goneSince = time.Time{}
	return []string{ev.PodNamespace, ev.PodName, ev.ContainerName}, false
}

// expired forgets, and returns, the pods whose cgroup has been gone for
// longer than the grace period.
func (w *workloads) expired(now time.Time) []pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []pod
	for key, st := range w.pods {
		switch {
		case st.cgroup == "" || w.exists(st.cgroup):
			st.goneSince = time.Time{}
		case st.goneSince.IsZero():
			st.goneSince = now
		case now.Sub(st.goneSince) >= w.grace:
			delete(w.pods, key)
			out = append(out, key)
		}
	}
	return out
}

// podCgroup is the pod's own directory in a cgroup path: the one whose name
// carries the pod's UID (cgroupfs: pod<uid>; systemd: ...-pod<uid_with_underscores>.slice).
func podCgroup(cgroup, uid string) string {
	if uid == "" {
		return ""
	}
	forms := []string{uid, strings.ReplaceAll(uid, "-", "_")}
	for dir := cgroup; dir != "/" && dir != "." && dir != ""; dir = parent(dir) {
		base := dir[strings.LastIndexByte(dir, '/')+1:]
		for _, f := range forms {
			if strings.Contains(base, f) {
				return dir
			}
		}
	}
	return ""
}

func parent(p string) string {
	if i := strings.LastIndexByte(p, '/'); i > 0 {
		return p[:i]
	}
	return "/"
}
