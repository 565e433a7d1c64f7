package vaultproc

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Children returns the IDs of parent's child processes whose command (the first word
// of their command line) is a file named base, read from /proc: the plugin processes a
// Vault server started.
func Children(parent int, base string) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
		if err != nil {
			continue // gone since the listing
		}
		// "pid (comm) state ppid ...": comm may hold spaces and parentheses, so the
		// fields are counted from the last ")".
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(stat[i+1:]))
		if len(fields) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(fields[1]); err != nil || ppid != parent {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil {
			continue
		}
		argv0, _, _ := bytes.Cut(cmdline, []byte{0})
		if filepath.Base(string(argv0)) == base {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// PeakRSS is the peak resident set of process pid (VmHWM), in bytes.
func PeakRSS(pid int) (int64, error) {
	v, err := statusBytes(pid, "VmHWM:")
	return v[0], err
}

// RSS is the resident set of process pid now, in bytes.
func RSS(pid int) (Resident, error) {
	v, err := statusBytes(pid, "VmRSS:", "RssAnon:", "RssFile:")
	return Resident{Total: v[0], Anon: v[1], File: v[2]}, err
}

// statusBytes is size fields of /proc/<pid>/status, in bytes, in the order asked.
func statusBytes(pid int, fields ...string) ([]int64, error) {
	out := make([]int64, len(fields))
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return out, err
	}
	found := 0
	for line := range strings.SplitSeq(string(data), "\n") {
		for i, field := range fields {
			if v, ok := strings.CutPrefix(line, field); ok {
				kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				if err != nil {
					return out, err
				}
				out[i] = kb << 10
				found++
			}
		}
	}
	if found != len(fields) {
		return out, os.ErrNotExist
	}
	return out, nil
}

// clockTick is the unit of /proc/<pid>/stat's CPU times (USER_HZ): 10 ms on every
// architecture Linux runs Go on.
const clockTick = 10 * time.Millisecond

// CPUTime is the CPU time process pid has used so far, user and system, all threads,
// to the 10 ms of the kernel's clock tick.
func CPUTime(pid int) (time.Duration, error) {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("unexpected /proc stat format")
	}
	// After "(comm)": state is the 1st field, utime the 12th and stime the 13th.
	fields := strings.Fields(string(stat[i+1:]))
	if len(fields) < 13 {
		return 0, errors.New("unexpected /proc stat format")
	}
	var ticks int64
	for _, f := range fields[11:13] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += n
	}
	return time.Duration(ticks) * clockTick, nil
}
