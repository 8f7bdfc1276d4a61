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
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// FS is a cgroup hierarchy (or a sub-tree of one) rooted at Root. Cgroups are
// named by their path relative to Root, "/" being Root itself.
type FS struct {
	Root string
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

// open opens a file beneath the root. openat2 refuses symlinks and ".." that
// would resolve outside; where openat2 is missing (kernels before 5.6) the
// lexical check in Clean is the guard.
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
	fd, err := openBeneath(fs.Root, name, flags)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: full, Err: err}
	}
	return os.NewFile(uintptr(fd), full), nil
}

var openat2Missing bool

func openBeneath(root, name string, flags int) (int, error) {
	flags |= unix.O_CLOEXEC
	if !openat2Missing {
		dirfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, err
		}
		defer unix.Close(dirfd)
		for {
			fd, err := unix.Openat2(dirfd, name, &unix.OpenHow{
				Flags:   uint64(flags),
				Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
			})
			if err == unix.EINTR || err == unix.EAGAIN {
				continue
			}
			if err != unix.ENOSYS {
				return fd, err
			}
			openat2Missing = true
			break
		}
	}
	for {
		fd, err := unix.Open(filepath.Join(root, name), flags, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// Open opens a cgroup file for reading. The caller closes it.
func (fs *FS) Open(rel, file string) (*os.File, error) {
	return fs.open(rel, file, unix.O_RDONLY)
}

// ReadFile reads a whole cgroup file.
func (fs *FS) ReadFile(rel, file string) ([]byte, error) {
	f, err := fs.Open(rel, file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	return data, nil
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

// Exists tells whether the cgroup directory is there.
func (fs *FS) Exists(rel string) bool {
	f, err := fs.open(rel, "", unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// IsNotExist tells whether err means the cgroup or its file is gone, as
// happens whenever a container exits between two reads.
func IsNotExist(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ESRCH)
}
