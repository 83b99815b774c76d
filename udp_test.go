//go:build linux || darwin

// This file tests UDP listeners: in shared and reuseport modes every worker
// receives datagrams on fd 3; rr mode refuses UDP, given or adopted.
package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func init() {
	extraRoles["udp"] = udpWorker
}

// udpWorker answers every datagram on fd 3 with "SLOT PID", using blocking
// recvfrom on the inherited socket as a C server would.
func udpWorker() int {
	if typ, err := syscall.GetsockoptInt(3, syscall.SOL_SOCKET, syscall.SO_TYPE); err != nil || typ != syscall.SOCK_DGRAM {
		os.Stderr.WriteString("udp worker: fd 3 is not a datagram socket\n")
		return 3
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	go func() {
		<-stop
		os.Exit(0)
	}()
	reply := []byte(os.Getenv("PREFORK_WORKER") + " " + strconv.Itoa(os.Getpid()))
	sdNotify("READY=1")
	buf := make([]byte, 2048)
	for {
		_, from, err := syscall.Recvfrom(3, buf, 0)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			os.Stderr.WriteString("udp worker: " + err.Error() + "\n")
			return 3
		}
		syscall.Sendto(3, reply, 0, from)
	}
}

// udpAsk sends one datagram from a fresh socket (a fresh source port, so that
// reuseport hashing can pick any socket) and returns the answer.
func udpAsk(addr string) (string, error) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	buf := make([]byte, 512)
	for try := 0; try < 3; try++ { // loopback does not lose datagrams, but be kind
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err = c.Write([]byte("ping")); err != nil {
			return "", err
		}
		var n int
		if n, err = c.Read(buf); err == nil {
			return string(buf[:n]), nil
		}
	}
	return "", err
}

func TestUDPEveryWorkerReceives(t *testing.T) {
	modes := []string{"shared"}
	if reuseportSupported {
		modes = append(modes, "reuseport")
	}
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			in := startPrefork(t, "udp", nil, "--mode", mode, "-l", "dns=udp:127.0.0.1:0", "-n", "3",
				"--ready", "notify")
			st := in.readyWorkers(3, 15*time.Second)
			addr := in.addr()
			want := map[string]string{} // slot -> pid
			for _, w := range st.Workers {
				want[strconv.Itoa(w.Slot)] = strconv.Itoa(w.PID)
			}
			seen := map[string]bool{}
			for i := 0; i < 600 && len(seen) < 3; i++ {
				ans, err := udpAsk(addr)
				if err != nil {
					t.Fatalf("datagram %d: %v", i, err)
				}
				slot, pid, _ := strings.Cut(ans, " ")
				if want[slot] != pid {
					t.Fatalf("answer %q is from no worker of %v", ans, want)
				}
				seen[slot] = true
			}
			if len(seen) != 3 {
				t.Errorf("only slots %v received datagrams out of 600", seen)
			}
			in.signal(syscall.SIGTERM)
			if code := in.wait(15 * time.Second); code != 0 {
				t.Errorf("exit status %d after TERM, want 0", code)
			}
		})
	}
}

func TestUDPWithRRIsAUsageError(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"--mode", "rr", "-l", "udp:127.0.0.1:0", "true"}, &out, &errb)
	if code != exitUsage || !strings.Contains(errb.String(), "UDP") || !strings.Contains(errb.String(), "--help") {
		t.Errorf("--mode rr with -l udp: status %d, stderr %q; want 2 and a message about UDP", code, errb.String())
	}

	// The same for a UDP socket adopted from socket activation: the shell sets
	// LISTEN_PID to its own pid, then execs prefork, keeping it.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	f, err := pc.(*net.UDPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"`,
		os.Args[0], "--mode", "rr", "true")
	cmd.Env = append(os.Environ(), roleEnv+"=prefork")
	cmd.ExtraFiles = []*os.File{f}
	b, _ := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != exitUsage || !strings.Contains(string(b), "UDP") {
		t.Errorf("--mode rr with an adopted UDP socket: status %d, output %q; want 2 and a message about UDP", code, b)
	}
}
