// This file tests that the control socket refuses a client of another user:
// the client runs as nobody (needs root), first against the 0600 socket file,
// then with the file opened to everyone, so that only the peer credential
// check stands in its way.
package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestControlRefusesOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running a client as another user needs root")
	}
	_, uid, gid, err := lookupUser("nobody")
	if err != nil {
		t.Skipf("no user nobody: %v", err)
	}
	dir, bin := worldDir(t)
	sock := filepath.Join(dir, "ctl.sock")
	in := startPrefork(t, "http", nil, "-l", "127.0.0.1:0", "-n", "1", "--control", sock)
	in.readyWorkers(1, 10*time.Second)

	asNobody := func() (int, string) {
		var out bytes.Buffer
		cmd := exec.Command(bin, "--ctl", sock, "stop")
		cmd.Env = append(os.Environ(), roleEnv+"=prefork")
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		cmd.Run()
		return cmd.ProcessState.ExitCode(), out.String()
	}
	if code, out := asNobody(); code != 1 || !strings.Contains(out, "permission denied") {
		t.Errorf("nobody against the 0600 socket: exit %d %q; want 1, permission denied", code, out)
	}
	// With the file mode out of the way, the peer check alone refuses.
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	if code, out := asNobody(); code != 1 || !strings.Contains(out, "neither prefork's") {
		t.Errorf("nobody against a 0666 socket: exit %d %q; want 1, refused by uid", code, out)
	}
	in.waitLog("refused a client of another user", 5*time.Second)
	if st, ok := in.readStatus(); !ok || st.Stopping || len(st.Workers) != 1 {
		t.Errorf("prefork acted on a refused client's stop: %+v", st)
	}
	mustCtl(t, sock, "status") // root still gets in
}
