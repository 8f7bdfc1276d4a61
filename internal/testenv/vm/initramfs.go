package vm

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/oom-guard/oom-guard/internal/testenv/vm/proto"
)

// Paths in the guest.
const (
	guestBin     = "/bin"
	guestSrc     = "/src" // the test binary's working directory
	guestOut     = "/out"
	guestModules = "/lib/modules"
)

// initramfs is what goes into the guest's root file system.
type initramfs struct {
	init, test string // host paths of the two binaries
	testdata   string // host path of the package's testdata, "" for none
	modules    []string
	config     proto.Config
}

// write packs the initramfs into the file out.
func (r *initramfs) write(out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	w := newCpioWriter(f)
	for _, d := range []string{"/dev", "/proc", "/sys", "/root", guestBin, guestSrc, "/lib", guestModules} {
		w.Dir(d, 0o755)
	}
	for _, d := range []string{"/tmp", guestOut} {
		w.Dir(d, 0o777|os.ModeSticky)
	}
	// The kernel opens /dev/console as /init's stdin, stdout and stderr
	// before /init can mount devtmpfs; without the node /init would start
	// with no diagnostics channel.
	w.CharDev("/dev/console", 0o600, 5, 1)
	w.File("/init", 0o755, r.init)
	w.File(r.config.Args[0], 0o755, r.test)
	if r.testdata != "" {
		if err := addTree(w, r.testdata, path.Join(guestSrc, "testdata")); err != nil {
			f.Close()
			return err
		}
	}
	for _, m := range r.modules {
		w.File(path.Join(guestModules, filepath.Base(m)), 0o644, m)
	}
	cfg, err := json.Marshal(r.config)
	if err != nil {
		f.Close()
		return err
	}
	w.Bytes(proto.ConfigPath, 0o644, cfg)
	err = w.Close()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write initramfs %s: %w", out, err)
	}
	return nil
}

// addTree copies the host directory src to dst in the archive: directories
// and regular files (symbolic links followed); anything else is left out.
func addTree(w *cpioWriter, src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("copy testdata: %w", err)
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		name := path.Join(dst, filepath.ToSlash(rel))
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("copy testdata: %w", err)
		}
		switch {
		case st.IsDir():
			w.Dir(name, st.Mode().Perm()|0o700)
		case st.Mode().IsRegular():
			w.File(name, st.Mode().Perm()|0o400, p)
		}
		return nil
	})
}

// moduleOrder lists the module files under dir that loading roots needs,
// each after the modules it depends on. The dependencies come from each
// module's own .modinfo section: the unpacked package has no modules.dep
// (depmod writes it at install time), and the guest has no modprobe.
func moduleOrder(dir string, roots ...string) ([]string, error) {
	index := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			index[moduleName(strings.TrimSuffix(d.Name(), ".ko"))] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kernel modules in %s (run scripts/vm-kernel again after removing its cache?): %w", dir, err)
	}
	var order []string
	state := map[string]int{} // 1: visiting, 2: done
	var visit func(name string) error
	visit = func(name string) error {
		name = moduleName(name)
		switch state[name] {
		case 1:
			return fmt.Errorf("kernel module %s: dependency cycle", name)
		case 2:
			return nil
		}
		file, ok := index[name]
		if !ok {
			return fmt.Errorf("kernel module %s not in %s (was the cache made by an older scripts/vm-kernel? remove it and run it again)", name, dir)
		}
		state[name] = 1
		deps, err := moduleDepends(file)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, file)
		return nil
	}
	for _, r := range roots {
		if err := visit(r); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// moduleName is the kernel's canonical module name: '-' and '_' are the
// same to it.
func moduleName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// moduleDepends reads the depends= entry of a module's .modinfo section.
func moduleDepends(file string) ([]string, error) {
	f, err := elf.Open(file)
	if err != nil {
		return nil, fmt.Errorf("kernel module %s: %w", file, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("kernel module %s: no .modinfo section", file)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("kernel module %s: .modinfo: %w", file, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}
