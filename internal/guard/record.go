package guard

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"k8s.io/klog/v2"
)

// What the guard writes into a cgroup (the v1 soft limit, v2 memory.high,
// v1 oom_kill_disable for a hold) is recorded in a file that outlives it (Config.StateFile; the DaemonSet
// keeps it on the node, in /run, which a reboot empties along with every
// cgroup), before the write: a guard that dies (SIGKILL, OOM, a node
// agent's restart) without restoring leaves the record, and the next guard
// restores the operator's value, not its predecessor's threshold.
//
// A record is keyed by the cgroup's path and the setting (Setting: "" for
// the soft limit, as the first records were written) and names its directory's inode,
// so a cgroup removed and made again under the same name is not taken for
// the one recorded. Where the record and the cgroup disagree:
//   - the inode differs (or the cgroup is gone): the record is of another
//     cgroup; it is dropped, and the value found is the operator's;
//   - the value found is not the one recorded as written: somebody changed
//     it since the dead guard wrote it; theirs is newer, so it is the value
//     to restore (said in one line);
//   - the value found is the one written: the dead guard's; the recorded
//     original is the value to restore.
//
// The file is a log of JSON lines, one per write or restore, appended
// without fsync (a process's writes survive its death; a node's crash
// empties /run and the cgroups alike) and compacted when a guard starts.
// Without a usable file (none configured, or it cannot be written) the
// guard works as before: the value found at the start is taken as the
// operator's, and the v2 tripwire's own rule (memory.high at the threshold
// is a dead guard's) still applies.

// limitRecord is one setting's entry: the inode of its cgroup's directory,
// the value found before the guard wrote (Original) and what it wrote
// (Written).
type limitRecord struct {
	Path     string  `json:"path"`
	Setting  setting `json:"setting,omitempty"`
	Ino      uint64  `json:"ino"`
	Original uint64  `json:"original"`
	Written  uint64  `json:"written"`
	Drop     bool    `json:"drop,omitempty"`
}

// setting is what of a cgroup a record is of.
type setting string

const (
	softLimitSetting setting = ""                 // v1 memory.soft_limit_in_bytes, v2 memory.high
	holdSetting      setting = "oom_kill_disable" // v1 memory.oom_control (hold.go); 1 or 0
)

func (s setting) String() string {
	if s == softLimitSetting {
		return "soft limit"
	}
	return string(s)
}

// show is a value of s as a log line gives it.
func (s setting) show(v uint64) string {
	switch {
	case s != softLimitSetting:
		return fmt.Sprint(v)
	case v >= 1<<62: // v1 keeps "no limit" as the largest page multiple below 2^63
		return "unlimited"
	}
	return bytesMiB(v)
}

func (r limitRecord) key() string { return r.Path + "\x00" + string(r.Setting) }

type records struct {
	f *os.File
	m map[string]limitRecord
}

// openRecords reads the record file (if any), compacts it, and keeps it
// open for appending.
func openRecords(name string) (*records, error) {
	if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		return nil, err
	}
	r := &records{m: map[string]limitRecord{}}
	if f, err := os.Open(name); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var rec limitRecord
			if json.Unmarshal(sc.Bytes(), &rec) != nil || rec.Path == "" {
				continue // a line cut short by a death mid-write
			}
			if rec.Drop {
				delete(r.m, rec.key())
			} else {
				r.m[rec.key()] = rec
			}
		}
		f.Close()
	} else if !os.IsNotExist(err) {
		return nil, err
	}
	tmp := name + ".new"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriter(f)
	for _, rec := range r.m {
		line, _ := json.Marshal(rec)
		_, _ = w.Write(append(line, '\n'))
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return nil, err
	}
	f.Close()
	if err := os.Rename(tmp, name); err != nil {
		return nil, err
	}
	if r.f, err = os.OpenFile(name, os.O_APPEND|os.O_WRONLY, 0o600); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *records) append(rec limitRecord) error {
	line, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if _, err := r.f.Write(append(line, '\n')); err != nil {
		return err
	}
	if rec.Drop {
		delete(r.m, rec.key())
	} else {
		r.m[rec.key()] = rec
	}
	return nil
}

func (r *records) close() {
	if r != nil && r.f != nil {
		r.f.Close()
	}
}

func dirInode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// recordedOriginal is the value of s to restore for c given the value
// found now, as the record of a dead guard says (see above); found if none.
func (g *Guard) recordedOriginal(c *cg, s setting, found uint64) uint64 {
	if g.records == nil {
		return found
	}
	abs := g.absPath(c.rel)
	rec, ok := g.records.m[limitRecord{Path: abs, Setting: s}.key()]
	if !ok {
		return found
	}
	ino, err := dirInode(abs)
	switch {
	case err != nil || ino != rec.Ino:
		_ = g.records.append(limitRecord{Path: abs, Setting: s, Drop: true})
		return found
	case found == rec.Written:
		klog.Infof("cgroup %s: %s %s was set by a guard that did not restore it: %s is the value to restore", c.rel, s, s.show(found), s.show(rec.Original))
		return rec.Original
	default:
		klog.Infof("cgroup %s: %s changed to %s since a previous guard set %s: kept as the value to restore (not %s)",
			c.rel, s, s.show(found), s.show(rec.Written), s.show(rec.Original))
		return found
	}
}

// recordWrite records, before the guard writes written into c's s, the
// value to restore. An error means the write must not be made: it would be
// a change no successor could undo.
func (g *Guard) recordWrite(c *cg, s setting, original, written uint64) error {
	if g.records == nil {
		return nil
	}
	abs := g.absPath(c.rel)
	ino, err := dirInode(abs)
	if err != nil {
		return err
	}
	rec := limitRecord{Path: abs, Setting: s, Ino: ino, Original: original, Written: written}
	if have, ok := g.records.m[rec.key()]; ok && have == rec {
		return nil
	}
	if err := g.records.append(rec); err != nil {
		return fmt.Errorf("record in %s: %w", g.records.f.Name(), err)
	}
	return nil
}

// recordRestored drops the record of c's s: its value is restored, or no
// longer the guard's to restore.
func (g *Guard) recordRestored(c *cg, s setting) {
	if g.records == nil {
		return
	}
	rec := limitRecord{Path: g.absPath(c.rel), Setting: s, Drop: true}
	if _, ok := g.records.m[rec.key()]; ok {
		if err := g.records.append(rec); err != nil {
			klog.Warningf("cgroup %s: drop its record: %v", c.rel, err)
		}
	}
}

// restoreRecorded puts back a value of s that a dead guard left in c and
// recorded, when this guard sets none there itself (another
// configuration).
func (g *Guard) restoreRecorded(c *cg, s setting, read func() (uint64, error), write func(uint64) error) {
	if g.records == nil {
		return
	}
	if _, ok := g.records.m[limitRecord{Path: g.absPath(c.rel), Setting: s}.key()]; !ok {
		return
	}
	v, err := read()
	if err != nil {
		return
	}
	if orig := g.recordedOriginal(c, s, v); orig != v {
		if err := write(orig); err != nil {
			klog.Warningf("cgroup %s: restore the %s a previous guard left: %v", c.rel, s, err)
			return
		}
	}
	g.recordRestored(c, s)
}
