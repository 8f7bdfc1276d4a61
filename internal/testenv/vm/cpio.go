package vm

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
)

// cpioWriter writes an uncompressed cpio archive in the "newc" format, the
// one the kernel unpacks as an initramfs (Documentation/driver-api/
// early-userspace/buffer-format.rst). Uncompressed because decompressing
// tens of megabytes under CPU emulation costs seconds; reading them costs
// nothing. Written here rather than by cpio(1) to spare the harness a tool.
//
// Parents must be added before what they contain: the kernel creates no
// directories on its own. Errors stick: after the first, every call is a
// no-op and Close returns it.
type cpioWriter struct {
	w   *bufio.Writer
	ino int
	err error
}

func newCpioWriter(w io.Writer) *cpioWriter {
	return &cpioWriter{w: bufio.NewWriterSize(w, 1<<20)}
}

// Mode bits of the newc header (those of stat(2)).
const (
	cpioDir  = 0o040000
	cpioReg  = 0o100000
	cpioChar = 0o020000
)

// header writes one entry's header and name; size is the data that follows.
func (c *cpioWriter) header(name string, mode uint32, size int64, rdevMajor, rdevMinor uint32) {
	if c.err != nil {
		return
	}
	name = strings.TrimPrefix(name, "/")
	if size > 0xffffffff {
		c.err = fmt.Errorf("cpio: %s: %d bytes is too large for newc", name, size)
		return
	}
	c.ino++
	nlink := 1
	if mode&cpioDir != 0 {
		nlink = 2
	}
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
	// devminor, rdevmajor, rdevminor, namesize (with its NUL), check.
	_, c.err = fmt.Fprintf(c.w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\x00",
		c.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdevMajor, rdevMinor, len(name)+1, 0, name)
	c.pad(int64(110 + len(name) + 1))
}

// pad writes the zeros that align the next field to 4 bytes, n having been
// written since the last aligned point.
func (c *cpioWriter) pad(n int64) {
	if c.err != nil {
		return
	}
	if r := n % 4; r != 0 {
		_, c.err = c.w.Write(make([]byte, 4-r))
	}
}

// Dir adds a directory.
func (c *cpioWriter) Dir(name string, perm os.FileMode) {
	c.header(name, cpioDir|uint32(perm.Perm())|sticky(perm), 0, 0, 0)
}

// CharDev adds a character device node.
func (c *cpioWriter) CharDev(name string, perm os.FileMode, major, minor uint32) {
	c.header(name, cpioChar|uint32(perm.Perm()), 0, major, minor)
}

// Bytes adds a regular file with the given contents.
func (c *cpioWriter) Bytes(name string, perm os.FileMode, data []byte) {
	c.header(name, cpioReg|uint32(perm.Perm()), int64(len(data)), 0, 0)
	if c.err == nil {
		_, c.err = c.w.Write(data)
	}
	c.pad(int64(len(data)))
}

// File adds a regular file copied from the host file src.
func (c *cpioWriter) File(name string, perm os.FileMode, src string) {
	if c.err != nil {
		return
	}
	f, err := os.Open(src)
	if err != nil {
		c.err = err
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		c.err = err
		return
	}
	c.header(name, cpioReg|uint32(perm.Perm()), st.Size(), 0, 0)
	if c.err != nil {
		return
	}
	// Exactly the size in the header, even if the file changes under us:
	// a short or long body would shift every later entry.
	n, err := io.Copy(c.w, io.LimitReader(f, st.Size()))
	if err == nil && n != st.Size() {
		err = fmt.Errorf("cpio: %s: read %d of %d bytes", src, n, st.Size())
	}
	if err != nil {
		c.err = fmt.Errorf("cpio: copy %s: %w", src, err)
		return
	}
	c.pad(n)
}

// Close writes the trailer and flushes.
func (c *cpioWriter) Close() error {
	c.header("TRAILER!!!", 0, 0, 0, 0)
	if c.err == nil {
		c.err = c.w.Flush()
	}
	return c.err
}

func sticky(perm os.FileMode) uint32 {
	if perm&os.ModeSticky != 0 {
		return 0o1000
	}
	return 0
}
