//go:build linux || darwin

// Tests of the cluster primary against a socket pair (fixture_test.go): the
// messages it answers, newconn and acks in rr mode, disconnect and stop.
package nodecluster

import (
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestNodeMessages(t *testing.T) {
	nc, _ := newTestCluster(t)
	f, nw := newFakeWorker(t, nc, 0)
	f.write(`{"cmd":"NODE_CLUSTER","act":"online","seq":0}`)

	// Unknown and non-object messages are ignored; the channel keeps working.
	f.write(`"hello"`)
	f.write(`[1,2,3]`)
	f.write(`{"cmd":"NODE_SOCKET_NOTIFY_CLOSE","key":"x"}`)
	f.write(`{"cmd":"NODE_CLUSTER","act":"somethingNew","seq":1}`)
	f.write(`{"act":{"not":"a string"},"seq":"x"}`)
	f.quiet(50 * time.Millisecond)

	// A handle the worker sends is acked (else its channel stalls) and closed.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	f.writeFd(`{"cmd":"NODE_HANDLE","type":"net.Server","msg":"new_worker"}`, int(w.Fd()))
	w.Close()
	if m, _ := f.read(); m["cmd"] != "NODE_HANDLE_ACK" {
		t.Fatalf("after the worker sent a handle: %v, want NODE_HANDLE_ACK", m)
	}
	r.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the primary kept the handle the worker sent: read %v, want EOF", err)
	}
	r.Close()

	// The seeds' suicide message: STOPPING=1.
	f.write(`{"act":"suicide"}`)
	if m := <-f.msgs; m["STOPPING"] != "1" {
		t.Fatalf("{act:'suicide'} gave %v, want STOPPING=1", m)
	}
	// listening: READY=1.
	f.write(`{"cmd":"NODE_CLUSTER","act":"listening","index":0,"address":null,"port":1,"addressType":4,"seq":2}`)
	if m := <-f.msgs; m["READY"] != "1" {
		t.Fatalf("listening gave %v, want READY=1", m)
	}

	// A graceful stop sends disconnect once, never twice.
	if !nc.stop(nw) {
		t.Fatal("stop: want to wait for the channel to close")
	}
	if m, _ := f.read(); m["cmd"] != "NODE_CLUSTER" || m["act"] != "disconnect" || m["seq"] == nil {
		t.Fatalf("stop sent %v, want act disconnect", m)
	}
	nc.stop(nw)
	f.quiet(50 * time.Millisecond)
	syscall.Shutdown(f.fd, syscall.SHUT_WR)
	select {
	case err := <-f.end:
		if err != nil {
			t.Fatalf("channel ended with %v, want end of file", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the end of the channel was not reported")
	}
}

func TestNodeExitedAfterDisconnect(t *testing.T) {
	nc, _ := newTestCluster(t)
	f, nw := newFakeWorker(t, nc, 0)
	f.write(`{"cmd":"NODE_CLUSTER","act":"online","seq":0}`)
	f.write(`{"cmd":"NODE_CLUSTER","act":"exitedAfterDisconnect","seq":7}`)
	if m, _ := f.read(); m["cmd"] != "NODE_CLUSTER" || m["ack"] != 7.0 {
		t.Fatalf("exitedAfterDisconnect got %v, want a reply with ack 7", m)
	}
	if m := <-f.msgs; m["STOPPING"] != "1" {
		t.Fatalf("exitedAfterDisconnect gave %v, want STOPPING=1", m)
	}
	// The worker began its own disconnect: prefork must not send another.
	if !nc.stop(nw) {
		t.Fatal("stop: want to wait for the channel to close")
	}
	f.quiet(50 * time.Millisecond)
}

func TestNodeNoDisconnectBeforeOnline(t *testing.T) {
	nc, _ := newTestCluster(t)
	_, nw := newFakeWorker(t, nc, 0)
	if nc.stop(nw) {
		t.Fatal("a worker that never said online is not a cluster worker: stop must not wait for disconnect")
	}
}

func TestNodeNewconn(t *testing.T) {
	nc, ls := newTestCluster(t, "127.0.0.1:0")
	rr := &fakeRR{}
	nc.rr = rr
	nc.ls[0].rr = true
	port := portOf(t, ls[0].FD)
	f, nw := newFakeWorker(t, nc, 0)
	f.write(`{"cmd":"NODE_CLUSTER","act":"online","seq":0}`)

	c1, c2 := socketPair(t)
	if err := nw.SendConn(0, 0, c1); err != syscall.EAGAIN {
		t.Fatalf("newconn before the worker listens: %v, want EAGAIN (another worker's turn)", err)
	}
	f.write(`{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":null,"port":` + strconv.Itoa(port) + `,"addressType":4,"backlog":0,"seq":1}`)
	m, fd := f.read()
	if fd >= 0 || m["cmd"] != "NODE_CLUSTER" || m["ack"] != 1.0 || m["errno"] != nil {
		t.Fatalf("rr reply %v fd %d: want a round-robin reply without a descriptor", m, fd)
	}
	if sn, _ := m["sockname"].(map[string]any); sn["port"] != float64(port) {
		t.Fatalf("rr reply %v: want sockname.port %d", m, port)
	}
	key := m["key"].(string)
	if err := nw.SendConn(41, 0, c1); err != nil {
		t.Fatal(err)
	}
	m, fd = f.read()
	inner, _ := m["msg"].(map[string]any)
	if m["type"] != "net.Native" || inner["act"] != "newconn" || inner["key"] != key || inner["seq"] != 41.0 || fd < 0 {
		t.Fatalf("newconn %v fd %d: want net.Native, act newconn, key %q, seq 41 and the connection", m, fd, key)
	}
	if fl, _ := fcntl(fd, syscall.F_GETFL, 0); fl&syscall.O_NONBLOCK == 0 {
		t.Fatal("the connection given to a Node worker is blocking")
	}
	syscall.Write(fd, []byte("x"))
	b := make([]byte, 1)
	if n, _ := syscall.Read(c2, b); n != 1 {
		t.Fatal("the descriptor sent is not the connection")
	}
	f.write(`{"cmd":"NODE_HANDLE_ACK"}`)
	f.write(`{"cmd":"NODE_CLUSTER","ack":41,"accepted":true,"seq":2}`)
	// A NACKed newconn is refused: the connection goes elsewhere.
	if err := nw.SendConn(42, 0, c1); err != nil {
		t.Fatal(err)
	}
	f.read()
	f.write(`{"cmd":"NODE_HANDLE_NACK"}`)
	f.write(`{"cmd":"NODE_CLUSTER","ack":43,"accepted":false,"seq":3}`)
	deadline := time.Now().Add(5 * time.Second)
	for {
		rr.mu.Lock()
		got := strings.Join(rr.acks, " ")
		rr.mu.Unlock()
		if got == "41:true 42:false 43:false" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("acks to the dispatcher: %q, want 41:true 42:false 43:false", got)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// After close, the worker gets no more connections on that key.
	f.write(`{"cmd":"NODE_CLUSTER","act":"close","key":"` + key + `","seq":4}`)
	deadline = time.Now().Add(5 * time.Second)
	for nw.CanTake(0) {
		if time.Now().After(deadline) {
			t.Fatal("after close the worker still takes connections for that listener")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A stop in rr mode sends disconnect only once the worker has answered every
// connection it was handed, settleTime after the last answer: told when that
// happens, not polling.
func TestNodeStopSettles(t *testing.T) {
	nc, ls := newTestCluster(t, "127.0.0.1:0")
	nc.rr = &fakeRR{}
	nc.ls[0].rr = true
	f, nw := newFakeWorker(t, nc, 0)
	f.write(`{"cmd":"NODE_CLUSTER","act":"online","seq":0}`)
	f.write(`{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":null,"port":` + strconv.Itoa(portOf(t, ls[0].FD)) + `,"addressType":4,"backlog":0,"seq":1}`)
	f.read()
	c1, _ := socketPair(t)
	if err := nw.SendConn(7, 0, c1); err != nil {
		t.Fatal(err)
	}
	f.read()
	f.write(`{"cmd":"NODE_HANDLE_ACK"}`)
	if !nc.stop(nw) {
		t.Fatal("stop: want to wait for the channel to close")
	}
	f.quiet(3 * settleTime / 2) // connection 7 is not answered yet
	answered := time.Now()
	f.write(`{"cmd":"NODE_CLUSTER","ack":7,"accepted":true,"seq":2}`)
	if m, _ := f.read(); m["act"] != "disconnect" {
		t.Fatalf("stop sent %v, want act disconnect", m)
	}
	if d := time.Since(answered); d < settleTime {
		t.Fatalf("disconnect %v after the last connection was answered, want at least %v", d, settleTime)
	}
}
