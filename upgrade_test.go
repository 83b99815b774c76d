//go:build linux || darwin

// This file tests the in-place upgrade (prefork --ctl PATH upgrade) end to
// end: prefork runs from a copy of the test binary, a new copy is installed
// over it as a package would be, and the upgrade must keep the pid, the
// listeners and every worker while requests go on; the refusals and the way
// back must leave the old image serving.
package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prefork/prefork/internal/upgrade"
)

// upgradeTestBuild makes this process a test build of another kind when a
// marker next to its binary, named by the binary's inode, says so:
// upgrade-test.INODE.format holds the state format it reads and writes,
// upgrade-test.INODE.refuse why it refuses to take over any state. Keyed by
// the inode, a marker names one copy only: the old image, executed again on
// the way back, is not the new one even at the same path.
func upgradeTestBuild() {
	exe, err := os.Executable()
	if err != nil {
		return
	}
	var st syscall.Stat_t
	if syscall.Stat("/proc/self/exe", &st) != nil {
		return
	}
	base := filepath.Join(filepath.Dir(exe), fmt.Sprintf("upgrade-test.%d.", st.Ino))
	if b, err := os.ReadFile(base + "format"); err == nil {
		v, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		upgrade.Version, upgrade.MinVersion = v, v
	}
	if b, err := os.ReadFile(base + "refuse"); err == nil {
		takeoverRefusal = strings.TrimSpace(string(b))
	}
}

// installCopy installs a copy of the test binary at path as a package
// manager does (a new file renamed over the old); marker, when not "",
// names a test build's marker (format, refuse) to write with content.
func installCopy(t *testing.T, path, marker, content string) {
	t.Helper()
	src, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	tmp := path + ".new"
	dst, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	old, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "upgrade-test.*")) // an inode may come back
	for _, m := range old {
		os.Remove(m)
	}
	if marker != "" {
		var st syscall.Stat_t
		if err := syscall.Stat(tmp, &st); err != nil {
			t.Fatal(err)
		}
		m := filepath.Join(filepath.Dir(path), fmt.Sprintf("upgrade-test.%d.%s", st.Ino, marker))
		if err := os.WriteFile(m, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// upgradable is a prefork run from its own copy of the test binary, with a
// control socket.
type upgradable struct {
	*instance
	bin, ctl string
}

func startUpgradable(t *testing.T, mode string, n int, extra ...string) upgradable {
	t.Helper()
	return startUpgradableEnv(t, nil, mode, n, extra...)
}

func startUpgradableEnv(t *testing.T, env []string, mode string, n int, extra ...string) upgradable {
	t.Helper()
	return startUpgradableIn(t, nil, env, mode, n, extra...)
}

// startUpgradableIn runs prefork under a wrapper (unshare …), or none.
func startUpgradableIn(t *testing.T, wrapper, env []string, mode string, n int, extra ...string) upgradable {
	t.Helper()
	if !upgrade.Supported {
		t.Skip("the upgrade needs Linux")
	}
	dir := t.TempDir()
	u := upgradable{bin: filepath.Join(dir, "prefork"), ctl: filepath.Join(dir, "ctl.sock")}
	installCopy(t, u.bin, "", "")
	args := append([]string{"-l", "127.0.0.1:0", "-n", strconv.Itoa(n), "--mode", mode, "--control", u.ctl}, extra...)
	u.instance = startPreforkBinary(t, append(wrapper, u.bin), "http", env, args...)
	u.readyWorkers(n, 20*time.Second)
	return u
}

func workerPIDs(st statusFile) []int {
	var pids []int
	for _, w := range st.Workers {
		pids = append(pids, w.PID)
	}
	slices.Sort(pids)
	return pids
}

// sameWorkers fails the test unless prefork still runs as pid (the status
// file's pid is prefork's) with exactly these workers, every one ready.
func (u upgradable) sameWorkers(pids []int) statusFile {
	u.t.Helper()
	st := u.waitFor("the same workers", 10*time.Second, readyWhere(len(pids), nil))
	if st.PID != u.cmd.Process.Pid {
		u.t.Errorf("status file names pid %d, prefork is %d", st.PID, u.cmd.Process.Pid)
	}
	if got := workerPIDs(st); !slices.Equal(got, pids) {
		u.t.Errorf("workers %v after the upgrade, want the same %v", got, pids)
	}
	for _, pid := range pids {
		if !pidAlive(pid) {
			u.t.Errorf("worker pid %d is gone", pid)
		}
	}
	return st
}

func TestUpgradeInPlace(t *testing.T) {
	for _, mode := range []string{"shared", "reuseport"} {
		t.Run(mode, func(t *testing.T) {
			var extra []string
			if mode == "reuseport" {
				extra = []string{"--ready", "auto"} // the default; the others run --ready notify
			}
			u := startUpgradable(t, mode, 3, extra...)
			pids := workerPIDs(u.readyWorkers(3, 10*time.Second))
			addr := u.addr()
			finish := loadInBackground(addr, 4, false)
			time.Sleep(200 * time.Millisecond)
			installCopy(t, u.bin, "", "")
			code, out, errs := ctlCall(u.ctl, "upgrade", "--timeout", "60s")
			if code != 0 || !strings.Contains(out, "workers kept") {
				t.Fatalf("upgrade: exit %d, stdout %q, stderr %q; want 0", code, out, errs)
			}
			time.Sleep(300 * time.Millisecond) // requests go on in the new image
			total, failed := finish()
			if len(failed) > 0 || total == 0 {
				t.Errorf("%d of %d requests failed across the upgrade: %v", len(failed), total, failed[:min(len(failed), 3)])
			}
			u.sameWorkers(pids)
			if !strings.Contains(u.stderr.String(), "upgraded in place") {
				t.Errorf("the new image did not say it took over:\n%s", u.stderr.String())
			}

			// The new image supervises: a killed worker is replaced, HUP
			// reloads, the control socket answers, a second upgrade works.
			syscall.Kill(pids[0], syscall.SIGKILL)
			u.waitFor("the killed worker's replacement", 20*time.Second, readyWhere(3, func(w workerStatus) bool { return w.PID != pids[0] }))
			u.signal(syscall.SIGHUP)
			st := u.waitFor("generation 2", 30*time.Second, readyWhere(3, func(w workerStatus) bool { return w.Generation == 2 }))
			mustCtl(t, u.ctl, "status")
			if out := mustCtl(t, u.ctl, "metrics"); !strings.Contains(out, "prefork_") {
				t.Errorf("metrics after the upgrade: %q", out)
			}
			pids = workerPIDs(st)
			installCopy(t, u.bin, "", "")
			finish = loadInBackground(addr, 4, false)
			if code, out, errs := ctlCall(u.ctl, "upgrade"); code != 0 {
				t.Fatalf("second upgrade: exit %d, stdout %q, stderr %q", code, out, errs)
			}
			total, failed = finish()
			if len(failed) > 0 || total == 0 {
				t.Errorf("%d of %d requests failed across the second upgrade: %v", len(failed), total, failed[:min(len(failed), 3)])
			}
			u.sameWorkers(pids)
			u.signal(syscall.SIGTERM)
			if code := u.wait(30 * time.Second); code != 0 {
				t.Errorf("exit status %d after TERM, want 0", code)
			}
		})
	}
}

func TestUpgradeRefused(t *testing.T) {
	u := startUpgradable(t, "shared", 2)
	pids := workerPIDs(u.readyWorkers(2, 10*time.Second))
	addr := u.addr()
	install := func(name string, content string, mode os.FileMode) {
		tmp := u.bin + ".new"
		if err := os.WriteFile(tmp, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, u.bin); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name    string
		install func()
		want    string
	}{
		{"not a prefork", func() { install("sh", "#!/bin/sh\necho hello\n", 0o755) }, "does not answer the upgrade check"},
		{"not executable", func() { install("text", "#!/bin/sh\necho hello\n", 0o644) }, "not executable"},
		{"missing", func() { os.Remove(u.bin) }, "does not exist"},
		{"a newer state format", func() { installCopy(t, u.bin, "format", "2") }, "reads state formats 2 to 2"},
		{"cannot take over", func() { installCopy(t, u.bin, "refuse", "test build refuses") }, "rolled back"},
	}
	for _, c := range cases {
		c.install()
		code, out, errs := ctlCall(u.ctl, "upgrade", "--timeout", "60s")
		if code != 1 || !strings.Contains(errs, c.want) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want 1 and %q", c.name, code, out, errs, c.want)
		}
		u.sameWorkers(pids)
		if _, err := get(addr); err != nil {
			t.Errorf("%s: the old image does not serve: %v", c.name, err)
		}
	}
	// After all that, a real upgrade still works.
	installCopy(t, u.bin, "", "")
	if code, out, errs := ctlCall(u.ctl, "upgrade"); code != 0 {
		t.Fatalf("upgrade after the refusals: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	u.sameWorkers(pids)
}

func TestUpgradeRefusedInRRMode(t *testing.T) {
	u := startUpgradable(t, "rr", 1)
	code, _, errs := ctlCall(u.ctl, "upgrade")
	if code != 1 || !strings.Contains(errs, "upgrade is not supported in --mode rr yet") {
		t.Errorf("upgrade in rr mode: exit %d, stderr %q; want 1 and the reason", code, errs)
	}
}

// Under systemd (Type=notify): RELOADING=1 before the exec, READY=1 with the
// same MAINPID after it.
func TestUpgradeTellsSystemd(t *testing.T) {
	up := listenUpstream(t)
	u := startUpgradableEnv(t, []string{"NOTIFY_SOCKET=" + up.path}, "shared", 2)
	pids := workerPIDs(u.readyWorkers(2, 10*time.Second))
	up.waitCount(t, "READY=1", 1, 10*time.Second)
	installCopy(t, u.bin, "", "")
	if code, out, errs := ctlCall(u.ctl, "upgrade"); code != 0 {
		t.Fatalf("upgrade: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	up.waitCount(t, "READY=1", 2, 10*time.Second)
	u.sameWorkers(pids)
	var order []string
	for _, m := range up.messages() {
		for _, kv := range []string{"READY=1", "RELOADING=1", "STOPPING=1"} {
			if parseNotifyLine(m, kv) {
				order = append(order, kv)
			}
		}
	}
	if got := strings.Join(order, " "); got != "READY=1 RELOADING=1 READY=1" {
		t.Errorf("notifications %q, want READY=1 RELOADING=1 READY=1", got)
	}
	msgs := up.messages()
	if last := msgs[len(msgs)-1]; !parseNotifyLine(last, "MAINPID="+strconv.Itoa(u.cmd.Process.Pid)) && !readyWith(msgs[1:], "MAINPID="+strconv.Itoa(u.cmd.Process.Pid)) {
		t.Errorf("the READY=1 after the upgrade does not name MAINPID=%d: %q", u.cmd.Process.Pid, msgs)
	}
	u.signal(syscall.SIGTERM)
	if code := u.wait(30 * time.Second); code != 0 {
		t.Errorf("exit status %d after TERM, want 0", code)
	}
}

// The client's --timeout: a binary that never answers the check keeps the
// client past it (exit 3), and prefork refuses it once its own bound for the
// check ran out; the old image serves all along.
func TestUpgradeTimesOut(t *testing.T) {
	u := startUpgradable(t, "shared", 1)
	pids := workerPIDs(u.readyWorkers(1, 10*time.Second))
	tmp := u.bin + ".new"
	if err := os.WriteFile(tmp, []byte("#!/bin/sh\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, u.bin); err != nil {
		t.Fatal(err)
	}
	code, _, errs := ctlCall(u.ctl, "upgrade", "--timeout", "500ms")
	if code != 3 || !strings.Contains(errs, "no outcome within") {
		t.Errorf("upgrade --timeout 500ms: exit %d, stderr %q; want 3", code, errs)
	}
	if _, err := get(u.addr()); err != nil {
		t.Errorf("the old image does not serve: %v", err)
	}
	u.waitLog("did not answer the upgrade check", 30*time.Second)
	u.sameWorkers(pids)
}

// Signals sent while the upgrade runs. TTIN, whose default action stops a
// process, keeps coming during the exec: prefork is never stopped by it and
// handles it (in the old image or the new). Then HUPs keep coming during a
// second upgrade (refused while a reload runs, or not): none kills prefork
// or a worker by its default action; prefork ends by a graceful stop, its
// workers by their stop signal (not SIGKILLed by their parent-death signal).
func TestUpgradeUnderSignals(t *testing.T) {
	u := startUpgradable(t, "shared", 2, "-n", "2:6", "--idle-timeout", "1h")
	u.readyWorkers(2, 10*time.Second)
	spam := func(sig syscall.Signal, every time.Duration) int {
		installCopy(t, u.bin, "", "")
		done := make(chan int, 1)
		go func() {
			code, _, _ := ctlCall(u.ctl, "upgrade", "--timeout", "60s")
			done <- code
		}()
		for {
			select {
			case code := <-done:
				return code
			case <-time.After(every):
				u.cmd.Process.Signal(sig)
				if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", u.cmd.Process.Pid)); err == nil && strings.Contains(string(b), ") T ") {
					t.Fatalf("prefork was stopped by %v", sig)
				}
			}
		}
	}
	if code := spam(syscall.SIGTTIN, 5*time.Millisecond); code != 0 {
		t.Errorf("upgrade under TTIN: exit %d, want 0", code)
	}
	u.waitFor("a worker more", 30*time.Second, func(st statusFile) bool { return len(st.Workers) > 2 })
	u.readyWorkers(6, 60*time.Second) // the rest of the TTINs sent
	code := spam(syscall.SIGHUP, 2*time.Millisecond)
	if code != 0 && code != 1 { // 1: refused while a reload ran
		t.Errorf("upgrade under HUP: exit %d, want 0 or 1", code)
	}
	u.signal(syscall.SIGTERM)
	if st := u.wait(60 * time.Second); st != 0 {
		t.Errorf("exit status %d after TERM, want 0", st)
	}
	if out := u.stderr.String(); strings.Contains(out, "status=137") {
		t.Errorf("a worker was killed:\n%s", out)
	}
}

// As pid 1 of a new pid namespace (a container's init): the upgrade keeps pid
// 1 and the workers; prefork stops cleanly afterwards.
func TestUpgradeAsPID1(t *testing.T) {
	if _, err := exec.LookPath("unshare"); err != nil || os.Getuid() != 0 {
		t.Skip("needs root and unshare(1)")
	}
	u := startUpgradableIn(t, []string{"unshare", "-p", "-f", "--mount-proc"}, nil, "shared", 2)
	st := u.readyWorkers(2, 20*time.Second)
	if st.PID != 1 {
		t.Fatalf("prefork runs as pid %d in its namespace, want 1", st.PID)
	}
	pids := workerPIDs(st)
	finish := loadInBackground(u.addr(), 4, false)
	installCopy(t, u.bin, "", "")
	if code, out, errs := ctlCall(u.ctl, "upgrade", "--timeout", "60s"); code != 0 || !strings.Contains(out, "pid 1 runs") {
		t.Fatalf("upgrade as pid 1: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	total, failed := finish()
	if len(failed) > 0 || total == 0 {
		t.Errorf("%d of %d requests failed across the upgrade: %v", len(failed), total, failed[:min(len(failed), 3)])
	}
	st = u.waitFor("the same workers", 10*time.Second, readyWhere(2, nil))
	if st.PID != 1 || !slices.Equal(workerPIDs(st), pids) {
		t.Errorf("after the upgrade: pid %d, workers %v; want 1 and %v", st.PID, workerPIDs(st), pids)
	}
	if code, _, errs := ctlCall(u.ctl, "stop", "--timeout", "60s"); code != 0 {
		t.Errorf("stop: exit %d, stderr %q", code, errs)
	}
	if code := u.wait(60 * time.Second); code != 0 {
		t.Errorf("exit status %d after stop, want 0", code)
	}
}

// An exec that fails after the check passed (here the "new binary" answers
// the check, then takes its own x bit away) changes nothing: the reaper and
// the notify readers go on (a killed worker is replaced, a reload completes
// on READY=1), and a real upgrade works afterwards.
func TestUpgradeExecFails(t *testing.T) {
	u := startUpgradable(t, "shared", 2)
	pids := workerPIDs(u.readyWorkers(2, 10*time.Second))
	tmp := u.bin + ".new"
	script := "#!/bin/sh\necho 'prefork-upgrade-check 1 1 prefork fake'\nchmod 644 \"$0\"\n"
	if err := os.WriteFile(tmp, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, u.bin); err != nil {
		t.Fatal(err)
	}
	code, _, errs := ctlCall(u.ctl, "upgrade", "--timeout", "60s")
	if code != 1 || !strings.Contains(errs, "permission denied; nothing changed") {
		t.Fatalf("upgrade whose exec fails: exit %d, stderr %q; want 1", code, errs)
	}
	u.waitLog("upgrade failed; this prefork goes on", 10*time.Second)
	u.sameWorkers(pids)
	syscall.Kill(pids[0], syscall.SIGKILL)
	u.waitFor("the killed worker's replacement", 20*time.Second, readyWhere(2, func(w workerStatus) bool { return w.PID != pids[0] }))
	mustCtl(t, u.ctl, "reload", "--timeout", "60s")
	pids = workerPIDs(u.readyWorkers(2, 10*time.Second))
	installCopy(t, u.bin, "", "")
	if code, out, errs := ctlCall(u.ctl, "upgrade"); code != 0 {
		t.Fatalf("upgrade after a failed exec: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	u.sameWorkers(pids)
}
