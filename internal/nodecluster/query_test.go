//go:build linux || darwin

// Tests of queryServer: the listeners Node workers ask the primary for.
package nodecluster

import (
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func TestNodeQueryServerShared(t *testing.T) {
	nc, ls := newTestCluster(t, "127.0.0.1:0")
	port := portOf(t, ls[0].FD)
	f, _ := newFakeWorker(t, nc, 0)
	f.write(`{"cmd":"NODE_CLUSTER","act":"online","seq":0}`)
	f.write(`{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":null,"port":` + strconv.Itoa(port) + `,"addressType":4,"backlog":0,"seq":1}`)
	m, fd := f.read()
	if m["cmd"] != "NODE_HANDLE" || m["type"] != "net.Native" {
		t.Fatalf("reply %v: want a NODE_HANDLE of type net.Native", m)
	}
	if fd < 0 {
		t.Fatal("no descriptor came with the reply")
	}
	inner := m["msg"].(map[string]any)
	if inner["cmd"] != "NODE_CLUSTER" || inner["ack"] != 1.0 || inner["errno"] != 0.0 || inner["key"] == nil {
		t.Fatalf("inner reply %v: want cmd NODE_CLUSTER, ack 1, errno 0 and a key", inner)
	}
	if got := portOf(t, fd); got != port {
		t.Fatalf("the descriptor is bound to port %d, want prefork's listener on %d", got, port)
	}
	if fl, _ := fcntl(fd, syscall.F_GETFL, 0); fl&syscall.O_NONBLOCK == 0 {
		t.Fatal("the listening socket given to a Node worker is blocking (Node hangs in accept4)")
	}
	f.write(`{"cmd":"NODE_HANDLE_ACK"}`)

	// listen({fd: 3}) is prefork's listener 0; fd 9 is none of its listeners.
	f.write(`{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":null,"port":null,"addressType":null,"fd":3,"backlog":0,"seq":2}`)
	m, fd = f.read()
	if inner := m["msg"].(map[string]any); fd < 0 || portOf(t, fd) != port || inner["ack"] != 2.0 {
		t.Fatalf("listen({fd:3}): reply %v fd %d: want prefork's listener 0", m, fd)
	}
	f.write(`{"cmd":"NODE_HANDLE_ACK"}`)
	f.write(`{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":null,"port":null,"addressType":null,"fd":9,"backlog":0,"seq":3}`)
	m, fd = f.read()
	if fd >= 0 || m["errno"] != -float64(syscall.EBADF) || m["ack"] != 3.0 {
		t.Fatalf("listen({fd:9}): reply %v: want errno %d and no descriptor", m, -int(syscall.EBADF))
	}
}

func TestNodeQueryServerBindsOnRequest(t *testing.T) {
	nc, _ := newTestCluster(t)
	a, _ := newFakeWorker(t, nc, 0)
	b, _ := newFakeWorker(t, nc, 1)
	// TLS servers send their ticket keys; every worker gets the first one's.
	q := `{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":{"ticketKeys":"%s"},"address":"127.0.0.1","port":0,"addressType":4,"backlog":0,"seq":1}`
	a.write(strings.Replace(q, "%s", "aaaa", 1))
	ma, fa := a.read()
	b.write(strings.Replace(q, "%s", "bbbb", 1))
	mb, fb := b.read()
	if fa < 0 || fb < 0 {
		t.Fatalf("replies %v / %v: want a socket each", ma, mb)
	}
	if pa, pb := portOf(t, fa), portOf(t, fb); pa != pb || pa == 0 {
		t.Fatalf("workers got ports %d and %d: want one socket bound once and shared", pa, pb)
	}
	for _, m := range []map[string]any{ma, mb} {
		data, _ := m["msg"].(map[string]any)["data"].(map[string]any)
		if data["ticketKeys"] != "aaaa" {
			t.Fatalf("reply %v: want the first worker's ticket keys for everyone", m)
		}
	}
	// An address in use elsewhere: Node's negative errno, no descriptor.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	p := busy.Addr().(*net.TCPAddr).Port
	a.write(`{"cmd":"NODE_HANDLE_ACK"}`)
	a.write(`{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":"127.0.0.1","port":` + strconv.Itoa(p) + `,"addressType":4,"backlog":0,"seq":2}`)
	m, fd := a.read()
	if fd >= 0 || m["errno"] != -float64(syscall.EADDRINUSE) || m["ack"] != 2.0 {
		t.Fatalf("reply %v: want errno %d (EADDRINUSE) for a port in use", m, -int(syscall.EADDRINUSE))
	}
}
