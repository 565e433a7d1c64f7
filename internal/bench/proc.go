package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// peakRSS is the peak resident set (VmHWM, bytes) of the engine's and the trivial
// plugin's processes, which Vault started as its children; 0 where it cannot tell
// (no -vault-pid, or no /proc).
func (b *bench) peakRSS() (engine, trivial int64) {
	if b.o.vaultPID <= 0 {
		return 0, 0
	}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range dirs {
		stat, err := os.ReadFile(filepath.Join(dir, "stat")) //nolint:gosec // a /proc/<pid> entry from the glob above
		if err != nil {
			continue
		}
		// The parent pid is the second field after the command, which is in parentheses
		// and may itself hold spaces.
		i := strings.LastIndexByte(string(stat), ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(stat[i+1:]))
		if len(fields) < 2 || fields[1] != strconv.Itoa(b.o.vaultPID) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join(dir, "cmdline")) //nolint:gosec // a /proc/<pid> entry from the glob above
		argv0, _, _ := strings.Cut(string(cmdline), "\x00")
		var into *int64
		switch filepath.Base(argv0) {
		case b.o.pluginFile:
			into = &engine
		case b.o.trivialFile:
			into = &trivial
		default:
			continue
		}
		*into = max(*into, vmHWM(filepath.Join(dir, "status")))
	}
	return engine, trivial
}

func vmHWM(statusPath string) int64 {
	data, err := os.ReadFile(statusPath) //nolint:gosec // /proc/<pid>/status, from peakRSS
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
