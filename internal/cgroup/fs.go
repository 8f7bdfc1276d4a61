// Package cgroup reads and writes memory cgroup files.
//
// All file access goes through FS, which resolves every path beneath one
// root directory (openat2 with RESOLVE_BENEATH where the kernel has it), so a
// cgroup name taken from the kernel or from inotify can never make the guard
// touch a file outside the hierarchy it was given. Parsers take an io.Reader
// so they can be tested on recorded file contents.
package cgroup

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/oom-guard/oom-guard/internal/kernel"
)

// FS is a cgroup hierarchy (or a sub-tree of one) rooted at Root. Cgroups are
// named by their path relative to Root, "/" being Root itself.
type FS struct {
	Root string

	// The root directory, opened once (O_PATH) so that each access is one
	// openat2 beneath it rather than three syscalls.
	rootOnce sync.Once
	rootFd   int
	rootErr  error
}

// ErrEscape is returned for a cgroup path that would leave the root.
var ErrEscape = errors.New("path escapes the cgroup root")

// Clean turns a relative cgroup path into canonical form ("/a/b"), or fails
// when it would leave the root.
func Clean(rel string) (string, error) {
	if strings.ContainsRune(rel, 0) {
		return "", fmt.Errorf("cgroup %q: %w", rel, ErrEscape)
	}
	for _, part := range strings.Split(rel, "/") {
		if part == ".." {
			return "", fmt.Errorf("cgroup %q: %w", rel, ErrEscape)
		}
	}
	return path.Clean("/" + rel), nil
}

// Path is the absolute file-system path of a cgroup file (file may be "").
func (fs *FS) Path(rel, file string) string {
	return filepath.Join(fs.Root, rel, file)
}

// Rel is the cgroup path relative to Root of an absolute path, false when
// abs is not at or below Root.
func (fs *FS) Rel(abs string) (string, bool) {
	root := strings.TrimSuffix(fs.Root, "/")
	switch {
	case abs == root:
		return "/", true
	case strings.HasPrefix(abs, root+"/"):
		return abs[len(root):], true
	}
	return "", false
}

// open opens a file beneath the root. openat2 refuses symlinks and ".." that
// would resolve outside; where openat2 is missing (kernels before 5.6) the
// lexical check in Clean and a check that what was opened is on a cgroup
// file system are the guard (openChecked).
func (fs *FS) open(rel, file string, flags int) (*os.File, error) {
	rel, err := Clean(rel)
	if err != nil {
		return nil, err
	}
	if strings.ContainsRune(file, '/') {
		return nil, fmt.Errorf("cgroup %s: file %q: %w", rel, file, ErrEscape)
	}
	name := strings.TrimPrefix(path.Join(rel, file), "/")
	if name == "" {
		name = "."
	}
	full := fs.Path(rel, file)
	fd, err := fs.openBeneath(name, flags)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: full, Err: err}
	}
	return os.NewFile(uintptr(fd), full), nil
}

func (fs *FS) openBeneath(name string, flags int) (int, error) {
	flags |= unix.O_CLOEXEC
	if kernel.HasOpenat2() {
		fs.rootOnce.Do(func() {
			fs.rootFd, fs.rootErr = unix.Open(fs.Root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		})
		if fs.rootErr != nil {
			return -1, fs.rootErr
		}
		for {
			fd, err := unix.Openat2(fs.rootFd, name, &unix.OpenHow{
				Flags:   uint64(flags),
				Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
			})
			if err == unix.EINTR || err == unix.EAGAIN {
				continue
			}
			if err != unix.ENOSYS {
				return fd, err
			}
			kernel.MarkMissing(kernel.Openat2)
			break
		}
	}
	return openChecked(filepath.Join(fs.Root, name), flags)
}

// openChecked is the open for kernels without openat2 (before 5.6): a
// plain open(2) of a path already checked lexically (Clean: no "..", no
// "/" in a file name), then fstatfs on what was opened: it must be on a
// cgroup file system (v1 or v2), as opencontainers/cgroups checks its
// files. A symlink, a bind mount or anything else that would lead the
// guard out of the cgroup hierarchy ends on another file system and is
// refused with EXDEV, as openat2's RESOLVE_BENEATH refuses an escape.
// Cgroup file systems have no symlinks of their own, so the only way out
// is through something mounted or linked from outside, which this catches.
func openChecked(path string, flags int) (int, error) {
	for {
		fd, err := unix.Open(path, flags, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fd, err
		}
		if err := onCgroupFS(fd); err != nil {
			unix.Close(fd)
			return -1, err
		}
		return fd, nil
	}
}

func onCgroupFS(fd int) error {
	var st unix.Statfs_t
	for {
		err := unix.Fstatfs(fd, &st)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		break
	}
	if st.Type != unix.CGROUP_SUPER_MAGIC && st.Type != unix.CGROUP2_SUPER_MAGIC {
		return unix.EXDEV
	}
	return nil
}

// Open opens a cgroup file for reading. The caller closes it.
func (fs *FS) Open(rel, file string) (*os.File, error) {
	return fs.open(rel, file, unix.O_RDONLY)
}

// OpenFile opens a cgroup file with the given open(2) flags (O_CLOEXEC is
// added), for a file kept open: a PSI trigger on memory.pressure is
// written once and lives as long as its descriptor.
func (fs *FS) OpenFile(rel, file string, flags int) (*os.File, error) {
	return fs.open(rel, file, flags)
}

// ReadFile reads a whole cgroup file.
func (fs *FS) ReadFile(rel, file string) ([]byte, error) {
	f, err := fs.Open(rel, file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return preadAll(f, make([]byte, 0, 4096))
}

// preadAll reads a whole cgroup (or proc) file from offset 0 with raw
// pread(2) calls: no fstat, and a seq_file rewinds for every read at 0, so
// a file kept open reads fresh values each time.
func preadAll(f *os.File, buf []byte) ([]byte, error) {
	fd := int(f.Fd())
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := unix.Pread(fd, buf[len(buf):cap(buf)], int64(len(buf)))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", f.Name(), err)
		}
		if n == 0 {
			return buf, nil
		}
		asked := cap(buf) - len(buf)
		buf = buf[:len(buf)+n]
		if n < asked {
			// A seq_file hands over all it has when the buffer has room:
			// a short read is the end, and saves the read that returns 0.
			return buf, nil
		}
	}
}

// WriteFile writes data to a cgroup file in one write(2), which is what
// cgroup control files expect.
func (fs *FS) WriteFile(rel, file string, data string) error {
	f, err := fs.open(rel, file, unix.O_WRONLY)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write([]byte(data)); err != nil {
		return fmt.Errorf("write %q to %s: %w", data, f.Name(), err)
	}
	return nil
}

// ReadUint reads a file holding one unsigned number ("max" reads as Unlimited).
func (fs *FS) ReadUint(rel, file string) (uint64, error) {
	data, err := fs.ReadFile(rel, file)
	if err != nil {
		return 0, err
	}
	v, err := ParseUint(bytes.NewReader(data))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", fs.Path(rel, file), err)
	}
	return v, nil
}

// Exists tells whether the cgroup directory is there. Only an answer that
// it is gone is taken for no: a directory that cannot be opened for want
// of file descriptors (EMFILE) is still there, and forgetting it would
// leave it unguarded until the next walk.
func (fs *FS) Exists(rel string) bool {
	f, err := fs.open(rel, "", unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return !IsNotExist(err)
	}
	f.Close()
	return true
}

// IsNotExist tells whether err means the cgroup or its file is gone, as
// happens whenever a container exits between two reads.
func IsNotExist(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ESRCH)
}
