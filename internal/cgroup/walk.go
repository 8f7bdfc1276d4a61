package cgroup

import (
	"fmt"
	"os"
	"path"

	"golang.org/x/sys/unix"
)

// Children lists the sub-cgroups of rel (their relative paths).
func (fs *FS) Children(rel string) ([]string, error) {
	f, err := fs.open(rel, "", unix.O_DIRECTORY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ents, err := f.ReadDir(-1)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", f.Name(), err)
	}
	var kids []string
	for _, e := range ents {
		if e.IsDir() {
			kids = append(kids, path.Join(rel, e.Name()))
		}
	}
	return kids, nil
}

// Walk calls fn for rel and every cgroup below it, parents first. A cgroup
// that vanishes during the walk is skipped, not an error.
func (fs *FS) Walk(rel string, fn func(rel string) error) error {
	if err := fn(rel); err != nil {
		return err
	}
	kids, err := fs.Children(rel)
	if err != nil {
		if IsNotExist(err) {
			return nil
		}
		return err
	}
	for _, k := range kids {
		if err := fs.Walk(k, fn); err != nil {
			return err
		}
	}
	return nil
}

// Procs lists the processes of rel, and of its descendants when recursive.
func (fs *FS) Procs(rel string, recursive bool) ([]int, error) {
	var all []int
	visit := func(cg string) error {
		f, err := fs.Open(cg, "cgroup.procs")
		if err != nil {
			if IsNotExist(err) {
				return nil
			}
			return err
		}
		defer f.Close()
		pids, err := ParsePids(f)
		if err != nil {
			return fmt.Errorf("%s: %w", f.Name(), err)
		}
		all = append(all, pids...)
		return nil
	}
	if !recursive {
		return all, visit(rel)
	}
	return all, fs.Walk(rel, visit)
}

// AddProc moves a process into the cgroup.
func (fs *FS) AddProc(rel string, pid int) error {
	return fs.WriteFile(rel, "cgroup.procs", fmt.Sprint(pid))
}

// Mkdir creates a cgroup; Rmdir removes an empty one.
func (fs *FS) Mkdir(rel string) error {
	rel, err := Clean(rel)
	if err != nil {
		return err
	}
	return os.Mkdir(fs.Path(rel, ""), 0o755)
}

func (fs *FS) Rmdir(rel string) error {
	rel, err := Clean(rel)
	if err != nil {
		return err
	}
	return os.Remove(fs.Path(rel, ""))
}
