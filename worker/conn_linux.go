// This file holds what Conn does in a Linux-specific way.
package worker

import (
	"io"
	"os"
	"syscall"
)

// setNonblock makes a freshly accepted socket non-blocking with one fcntl: its
// other file status flags are all clear, so F_GETFL has nothing to keep.
func setNonblock(fd int) error {
	_, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_SETFL, syscall.O_NONBLOCK)
	if e != 0 {
		return e
	}
	return nil
}

// setTCPDefaults gives a TCP connection what net's Accept gives one:
// TCP_NODELAY, keep-alive probes after 15 s idle, every 15 s, 9 of them.
// Failures are ignored, as net does.
func setTCPDefaults(fd int) {
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1)
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, 15)
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, 15)
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, 9)
}

// sendFile sends what r holds with sendfile(2) when r is a regular file or an
// io.LimitedReader of one, from the file's offset (which it advances); handled
// is false, with nothing sent, for any other reader or a file sendfile refuses.
func (c *Conn) sendFile(r io.Reader) (written int64, handled bool, err error) {
	remain := int64(1) << 62
	lr, limited := r.(*io.LimitedReader)
	if limited {
		remain, r = lr.N, lr.R
		if remain <= 0 {
			return 0, true, nil
		}
	}
	f, ok := r.(*os.File)
	if !ok {
		return 0, false, nil
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return 0, false, nil
	}
	src, err := f.SyscallConn()
	if err != nil {
		return 0, false, nil
	}
	dst, err := c.f.SyscallConn()
	if err != nil {
		return 0, false, nil
	}
	var serr error
	cerr := src.Control(func(sfd uintptr) {
		serr = dst.Write(func(dfd uintptr) bool {
			for remain > 0 {
				n, e := syscall.Sendfile(int(dfd), int(sfd), nil, int(min(remain, 1<<30)))
				if n > 0 {
					written += int64(n)
					remain -= int64(n)
				}
				switch {
				case e == syscall.EINTR:
				case e == syscall.EAGAIN:
					return false // wait until the socket has room
				case e != nil:
					err = e
					return true
				case n == 0:
					return true // end of the file
				}
			}
			return true
		})
	})
	if limited {
		lr.N -= written
	}
	if written == 0 && (err == syscall.EINVAL || err == syscall.ENOSYS || err == syscall.EOPNOTSUPP) {
		return 0, false, nil // not for this file: copy it instead
	}
	if err == nil {
		err = serr
	}
	if err == nil {
		err = cerr
	}
	return written, true, err
}
