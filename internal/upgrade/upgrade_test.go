//go:build linux || darwin

package upgrade

import (
	"errors"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestStateRoundTrip(t *testing.T) {
	st := &State{Args: []string{"prefork", "-p", "0", "true"}, ExeFD: 7, Client: -1,
		Listeners: []Listener{{Name: "web", Network: "tcp", FD: 3}},
		Slots:     []Slot{{Index: 0, Socks: []int{3}}, {Index: 1, Socks: []int{9}, RestartIn: time.Second}},
		Procs:     []Worker{{PID: 42, Slot: 0, NotifyFD: 11, Age: time.Minute}},
		Control:   &Socket{Path: "/run/ctl", FD: 12}}
	if !Supported {
		t.Skip("no state file on this system")
	}
	fd, err := Write(st)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if fl, _, _ := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0); fl&syscall.FD_CLOEXEC == 0 {
		t.Errorf("the state's descriptor is inherited before Keep")
	}
	b, err := Read(fd)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != Version || got.Slots[1].RestartIn != time.Second || got.Procs[0].Age != time.Minute || got.Control.FD != 12 {
		t.Errorf("decoded %+v", got)
	}
	if fds := got.FDs(); len(fds) != 6 { // exe, listener, two sockets (3 again), notify, control
		t.Errorf("FDs %v", fds)
	}
	if b2, _ := Read(fd); string(b2) != string(b) {
		t.Errorf("a second read (the way back) differs")
	}
}

func TestDecodeRefusesOtherFormats(t *testing.T) {
	for _, v := range []int{0, Version + 1} {
		_, err := Decode([]byte(`{"version":` + strconv.Itoa(v) + `}`))
		var fe *FormatError
		if !errors.As(err, &fe) || fe.Got != v {
			t.Errorf("format %d: %v, want a FormatError", v, err)
		}
	}
	if _, err := Decode([]byte("not json")); err == nil {
		t.Error("garbage decoded")
	}
}

func TestCheckAnswer(t *testing.T) {
	a, err := ParseCheck([]byte(CheckLine("prefork 1.2.3")))
	if err != nil || a.Min != MinVersion || a.Max != Version || a.Version != "prefork 1.2.3" || a.Reads() != nil {
		t.Errorf("own answer: %+v %v", a, err)
	}
	if _, err := ParseCheck([]byte("hello\n")); err == nil {
		t.Error("a non-prefork's output was taken for an answer")
	}
	newer := Answer{Min: Version + 1, Max: Version + 1, Version: "prefork 9"}
	if err := newer.Reads(); err == nil || !strings.Contains(err.Error(), "reads state formats") {
		t.Errorf("a newer format only: %v", err)
	}
}

func TestInheritedEnv(t *testing.T) {
	t.Setenv(StateEnv, EnvValue(5, 6))
	fd, exe, ok, err := Inherited()
	if !ok || err != nil || fd != 5 || exe != 6 {
		t.Errorf("Inherited: %d %d %v %v", fd, exe, ok, err)
	}
	t.Setenv(StateEnv, "x")
	if _, _, ok, err := Inherited(); !ok || err == nil {
		t.Errorf("a bad value: %v %v", ok, err)
	}
	if env := Clean([]string{"A=1", StateEnv + "=3:4", RollbackEnv + "=x", CheckEnv + "=1"}); len(env) != 1 {
		t.Errorf("Clean left %v", env)
	}
}
