package report

import (
	"os"
	"strings"
	"sync"
	"time"

	"github.com/oom-guard/oom-guard/internal/event"
)

// Series per workload are bounded: at most maxWorkloads containers (of a
// pod, or of plain Docker) have series of their own (more are folded into
// the unlabelled series, and counted), and the series of one whose cgroup
// (the pod's, for a pod) has been gone for workloadGrace are deleted. A
// pod's counts outlive its containers' restarts: they are labelled by
// names, not by container IDs, and kept while the pod's cgroup exists.
const (
	maxWorkloads  = 2000
	workloadGrace = 10 * time.Minute
)

// workload is a series' namespace, pod and container labels.
type workload struct{ namespace, pod, container string }

type workloadState struct {
	cgroup    string    // the directory whose removal ends it; "" if not known
	goneSince time.Time // zero while the cgroup exists
}

// workloads tracks the workloads that have series.
type workloads struct {
	max   int
	grace time.Duration
	mu    sync.Mutex
	all   map[workload]*workloadState
	// exists is os.Stat, replaceable in tests.
	exists func(path string) bool
}

func newWorkloads(max int, grace time.Duration) *workloads {
	return &workloads{max: max, grace: grace, all: map[workload]*workloadState{}, exists: func(p string) bool {
		_, err := os.Stat(p)
		return err == nil || !os.IsNotExist(err)
	}}
}

// labels are ev's namespace, pod and container labels, and whether they
// had to be folded away (too many workloads).
func (w *workloads) labels(ev event.Event) (labels []string, folded bool) {
	key := workload{ev.PodNamespace, ev.PodName, ev.ContainerName}
	if key.pod == "" && key.container == "" {
		return []string{"", "", ""}, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	st, ok := w.all[key]
	if !ok {
		if len(w.all) >= w.max {
			return []string{"", "", ""}, true
		}
		st = &workloadState{}
		w.all[key] = st
	}
	dir := ev.ProcCgroup
	if key.pod != "" {
		dir = podCgroup(ev.ProcCgroup, ev.PodUID)
	}
	if dir != "" {
		st.cgroup = dir
	}
	st.goneSince = time.Time{}
	return []string{key.namespace, key.pod, key.container}, false
}

// expired forgets, and returns, the workloads whose cgroup has been gone
// for longer than the grace period.
func (w *workloads) expired(now time.Time) []workload {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []workload
	for key, st := range w.all {
		switch {
		case st.cgroup == "" || w.exists(st.cgroup):
			st.goneSince = time.Time{}
		case st.goneSince.IsZero():
			st.goneSince = now
		case now.Sub(st.goneSince) >= w.grace:
			delete(w.all, key)
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
