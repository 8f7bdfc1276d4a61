package notify

import (
	"bytes"
	"fmt"
	"slices"
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
//
// Its methods belong to one goroutine, but Watch: inotify_add_watch on a
// cgroup directory can wait in the kernel for milliseconds (3-25 ms
// measured under load), so another goroutine may make a watch with Watch
// and the owner Adopt it. Events of a watch made but not yet adopted are
// held until it is (or until the kernel drops the watch), so none that
// comes between the two is lost.
type Inotify struct {
	fd    int
	byWd  map[int32]string
	byDir map[string]int32
	buf   []byte
	held  []heldEvent // of watches not adopted yet
}

// heldEvent is an event of a watch not adopted yet.
type heldEvent struct {
	wd   int32
	name string
	mask uint32
}

// maxHeld bounds the events held for watches not adopted: beyond, Read
// says overflow, as the kernel does when its queue is full.
const maxHeld = 4096

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

// Watch makes a watch on dir, an absolute path, and returns its
// descriptor for Adopt. It is the system call alone: safe from any
// goroutine while the Inotify is open.
func (n *Inotify) Watch(dir string) (int32, error) {
	wd, err := unix.InotifyAddWatch(n.fd, dir, dirMask)
	if err != nil {
		return -1, fmt.Errorf("inotify watch %s: %w", dir, err)
	}
	return int32(wd), nil
}

// Adopt records a watch made by Watch as dir's, and returns the changes
// held for it since it was made.
func (n *Inotify) Adopt(dir string, wd int32) []DirChange {
	n.byWd[wd] = dir
	n.byDir[dir] = wd
	var out []DirChange
	kept := n.held[:0]
	for _, h := range n.held {
		if h.wd == wd {
			out = append(out, DirChange{Dir: dir, Name: h.name, Mask: h.mask})
		} else {
			kept = append(kept, h)
		}
	}
	clear(n.held[len(kept):])
	n.held = kept
	if len(n.held) == 0 {
		n.held = nil
	}
	return out
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
				overflow = n.hold(ev.Wd, name, ev.Mask) || overflow
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

// hold keeps an event of a watch not adopted (yet): made by Watch, or
// already removed, whose events the kernel may still have queued. A watch
// the kernel dropped (IN_IGNORED) takes its held events with it. It says
// whether the event was dropped for want of room.
func (n *Inotify) hold(wd int32, name string, mask uint32) bool {
	if mask&unix.IN_IGNORED != 0 {
		n.held = slices.DeleteFunc(n.held, func(h heldEvent) bool { return h.wd == wd })
		return false
	}
	if len(n.held) >= maxHeld {
		return true
	}
	n.held = append(n.held, heldEvent{wd, name, mask})
	return false
}

func (n *Inotify) Drain() error { _, _, err := n.Read(); return err }

// Close releases every watch at once.
func (n *Inotify) Close() error { return unix.Close(n.fd) }
