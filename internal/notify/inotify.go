package notify

import (
	"bytes"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DirChange is one inotify event on a watched cgroup directory.
type DirChange struct {
	Dir  string // the watched directory, as given to Add
	Name string // the entry inside it
	Mask uint32
}

func (c DirChange) IsDir() bool   { return c.Mask&unix.IN_ISDIR != 0 }
func (c DirChange) Created() bool { return c.Mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0 }
func (c DirChange) Removed() bool {
	return c.Mask&(unix.IN_DELETE|unix.IN_MOVED_FROM|unix.IN_DELETE_SELF) != 0
}
func (c DirChange) Modified() bool { return c.Mask&unix.IN_MODIFY != 0 }

// Inotify watches cgroup directories for sub-cgroups created and removed and
// for writes to their files (a new limit is a write to the limit file).
type Inotify struct {
	fd    int
	byWd  map[int32]string
	byDir map[string]int32
	buf   []byte
}

const dirMask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM |
	unix.IN_MODIFY | unix.IN_DELETE_SELF | unix.IN_ONLYDIR

func NewInotify() (*Inotify, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	return &Inotify{fd: fd, byWd: map[int32]string{}, byDir: map[string]int32{}, buf: make([]byte, 64<<10)}, nil
}

func (n *Inotify) Fd() int { return n.fd }

// Add watches dir, an absolute path.
func (n *Inotify) Add(dir string) error {
	wd, err := unix.InotifyAddWatch(n.fd, dir, dirMask)
	if err != nil {
		return fmt.Errorf("inotify watch %s: %w", dir, err)
	}
	n.byWd[int32(wd)] = dir
	n.byDir[dir] = int32(wd)
	return nil
}

// Remove stops watching dir; a dir that is already gone is no error.
func (n *Inotify) Remove(dir string) {
	if wd, ok := n.byDir[dir]; ok {
		_, _ = unix.InotifyRmWatch(n.fd, uint32(wd))
		delete(n.byDir, dir)
		delete(n.byWd, wd)
	}
}

// Watched is the number of directories watched.
func (n *Inotify) Watched() int { return len(n.byDir) }

// Read returns the changes queued so far without blocking. overflow means
// the kernel dropped events (IN_Q_OVERFLOW): the caller must rescan.
func (n *Inotify) Read() (changes []DirChange, overflow bool, err error) {
	for {
		k, err := unix.Read(n.fd, n.buf)
		if err == unix.EAGAIN || k == 0 {
			return changes, overflow, nil
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return changes, overflow, fmt.Errorf("read inotify: %w", err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= k; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&n.buf[off]))
			nameStart := off + unix.SizeofInotifyEvent
			nameEnd := nameStart + int(ev.Len)
			if nameEnd > k {
				break
			}
			name := string(bytes.TrimRight(n.buf[nameStart:nameEnd], "\x00"))
			off = nameEnd
			if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
				overflow = true
				continue
			}
			dir, ok := n.byWd[ev.Wd]
			if !ok {
				continue
			}
			if ev.Mask&unix.IN_IGNORED != 0 {
				delete(n.byWd, ev.Wd)
				if n.byDir[dir] == ev.Wd {
					delete(n.byDir, dir)
				}
				continue
			}
			changes = append(changes, DirChange{Dir: dir, Name: name, Mask: ev.Mask})
		}
	}
}

func (n *Inotify) Drain() error { _, _, err := n.Read(); return err }

// Close releases every watch at once.
func (n *Inotify) Close() error { return unix.Close(n.fd) }
