//go:build linux || darwin

// This file holds a Node cluster worker written in Go, which speaks the
// channel as node does (online, queryServer, listening, newconn answers) and
// can then misbehave as issue 18 found workers do: an endless line,
// descriptors without NODE_HANDLE, a channel closed while it keeps running,
// every connection refused, a flood of queryServer. The tests that run it
// are in node_hostile_e2e_test.go.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

func init() { extraRoles["nodefake"] = fakeNodeWorker }

// fakeNode is the worker's side of the channel.
type fakeNode struct {
	fd      int
	mu      sync.Mutex // the writes
	seq     int
	replies map[int]chan map[string]any // queryServer seq → its reply
	rmu     sync.Mutex
	refuse  bool
	keep    bool // it keeps running once the channel is closed
}

func (f *fakeNode) send(line string, fd int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var oob []byte
	if fd >= 0 {
		oob = syscall.UnixRights(fd)
	}
	b := []byte(line + "\n")
	for len(b) > 0 {
		n, err := syscall.SendmsgN(f.fd, b, oob, nil, 0)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b, oob = b[n:], nil
	}
	return nil
}

func (f *fakeNode) nextSeq() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	return f.seq
}

// query sends a queryServer and waits for its reply, with the descriptor that
// came with it (or -1).
func (f *fakeNode) query(port, index int) (map[string]any, int) {
	seq := f.nextSeq()
	ch := make(chan map[string]any, 1)
	f.rmu.Lock()
	f.replies[seq] = ch
	f.rmu.Unlock()
	f.send(fmt.Sprintf(`{"cmd":"NODE_CLUSTER","act":"queryServer","index":%d,"data":null,"address":"127.0.0.1","port":%d,"addressType":4,"backlog":511,"seq":%d}`, index, port, seq), -1)
	r := <-ch
	fd := -1
	if v, ok := r["_fd"].(int); ok {
		fd = v
	}
	return r, fd
}

// read handles what prefork sends: replies, newconns, disconnect.
func (f *fakeNode) read(serve func(net.Conn)) {
	buf := make([]byte, 64<<10)
	oob := make([]byte, syscall.CmsgSpace(4*8))
	var fds []int
	var partial []byte
	for {
		n, oobn, _, _, err := syscall.Recvmsg(f.fd, buf, oob, 0)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || n == 0 {
			if f.keep {
				return
			}
			os.Exit(0) // the primary went away: node exits 0
		}
		if oobn > 0 {
			msgs, _ := syscall.ParseSocketControlMessage(oob[:oobn])
			for _, m := range msgs {
				r, _ := syscall.ParseUnixRights(&m)
				fds = append(fds, r...)
			}
		}
		partial = append(partial, buf[:n]...)
		for {
			i := bytes.IndexByte(partial, '\n')
			if i < 0 {
				break
			}
			line := string(partial[:i])
			partial = partial[i+1:]
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) != nil {
				continue
			}
			fd := -1
			if m["cmd"] == "NODE_HANDLE" {
				if len(fds) > 0 {
					fd, fds = fds[0], fds[1:]
				}
				f.send(`{"cmd":"NODE_HANDLE_ACK"}`, -1)
				m, _ = m["msg"].(map[string]any)
			}
			f.message(m, fd, serve)
		}
	}
}

func (f *fakeNode) message(m map[string]any, fd int, serve func(net.Conn)) {
	switch {
	case m["act"] == "newconn":
		accepted := !f.refuse
		f.send(fmt.Sprintf(`{"cmd":"NODE_CLUSTER","ack":%v,"accepted":%v,"seq":%d}`, m["seq"], accepted, f.nextSeq()), -1)
		if accepted {
			file := os.NewFile(uintptr(fd), "conn")
			c, err := net.FileConn(file)
			file.Close()
			if err == nil {
				go serve(c)
			}
		} else {
			syscall.Close(fd)
		}
	case m["act"] == "disconnect":
		os.Exit(0)
	case m["ack"] != nil:
		ack, _ := m["ack"].(float64)
		if fd >= 0 {
			m["_fd"] = fd
		}
		f.rmu.Lock()
		ch := f.replies[int(ack)]
		delete(f.replies, int(ack))
		f.rmu.Unlock()
		if ch != nil {
			ch <- m
		} else if fd >= 0 {
			syscall.Close(fd)
		}
	}
}

// fakeNodeWorker listens on FAKE_PORT through the cluster channel and answers
// every HTTP request with its pid; FAKE_NODE says how it misbehaves, once
// ready (with FAKE_ONCE, only the worker that first creates that file does):
//
//	endless    writes 768 MiB without a newline
//	closechan  closes its channel and keeps running
//	refuse     answers every newconn accepted: false
//
// and on request: /fds sends FAKE_FDS user lines, each with a descriptor;
// /query?n=N sends N queryServers for port 0 and answers with the count of
// each errno.
func fakeNodeWorker() int {
	fd, err := strconv.Atoi(os.Getenv("NODE_CHANNEL_FD"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "nodefake: no NODE_CHANNEL_FD")
		return 2
	}
	syscall.SetNonblock(fd, false)
	port, _ := strconv.Atoi(os.Getenv("FAKE_PORT"))
	how := os.Getenv("FAKE_NODE")
	if once := os.Getenv("FAKE_ONCE"); once != "" {
		if f, err := os.OpenFile(once, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); err != nil {
			how = "" // a replacement: it behaves
		} else {
			f.Close()
		}
	}
	f := &fakeNode{fd: fd, replies: map[int]chan map[string]any{}, refuse: how == "refuse",
		keep: how == "endless" || how == "closechan"}
	serve := func(c net.Conn) {
		defer c.Close()
		r := bufio.NewReader(c)
		line, _ := r.ReadString('\n')
		for {
			h, err := r.ReadString('\n')
			if err != nil || h == "\r\n" {
				break
			}
		}
		path := strings.Fields(line + " / ")[1]
		body := strconv.Itoa(os.Getpid())
		switch {
		case path == "/fds":
			n, _ := strconv.Atoi(os.Getenv("FAKE_FDS"))
			for i := 0; i < n; i++ {
				null, _ := syscall.Open("/dev/null", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
				f.send(fmt.Sprintf(`{"hello":%d}`, i), null)
				syscall.Close(null)
			}
		case strings.HasPrefix(path, "/query?n="):
			n, _ := strconv.Atoi(strings.TrimPrefix(path, "/query?n="))
			counts := map[string]int{}
			for i := 0; i < n; i++ {
				r, rfd := f.query(0, 1000+os.Getpid()%1000*2000+i) // indexes no other worker asks for
				counts[fmt.Sprint(r["errno"])]++
				if rfd >= 0 {
					syscall.Close(rfd)
				}
			}
			b, _ := json.Marshal(counts)
			body = string(b)
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	}
	go f.read(serve)
	f.send(`{"cmd":"NODE_CLUSTER","act":"online","seq":0}`, -1)
	r, lfd := f.query(port, 0)
	if e, ok := r["errno"].(float64); ok && e != 0 {
		fmt.Fprintln(os.Stderr, "nodefake: queryServer:", r["errno"])
		return 3
	}
	if lfd >= 0 { // shared and reuseport: the listening socket itself
		file := os.NewFile(uintptr(lfd), "listener")
		l, err := net.FileListener(file)
		file.Close()
		if err != nil {
			fmt.Fprintln(os.Stderr, "nodefake:", err)
			return 3
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go serve(c)
			}
		}()
	}
	f.send(fmt.Sprintf(`{"cmd":"NODE_CLUSTER","act":"listening","index":0,"address":"127.0.0.1","port":%d,"addressType":4,"seq":%d}`, port, f.nextSeq()), -1)
	switch how {
	case "endless":
		chunk := bytes.Repeat([]byte("x"), 1<<20)
		for range 768 { // 768 MiB without a newline, then it waits
			f.mu.Lock()
			_, err := syscall.Write(fd, chunk)
			f.mu.Unlock()
			if err != nil && err != syscall.EINTR {
				break
			}
		}
	case "closechan":
		f.mu.Lock()
		syscall.Shutdown(fd, syscall.SHUT_RDWR)
		f.mu.Unlock()
	}
	select {}
}
