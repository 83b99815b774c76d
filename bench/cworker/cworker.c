/*
 * cworker: the small C HTTP server of the benchmarks, one epoll loop, no
 * library. It runs under prefork in every mode and under bench/barelaunch and
 * bench/refmaster, and answers "w=<slot> pid=<pid>" like bench/goserver.
 *
 *   shared / reuseport (LISTEN_FDS): accept on fd 3, non-blocking
 *   rr (PREFORK_MODE=rr): fd 3 is the handoff channel (README, "The rr handoff protocol"); every
 *     connection received in one wake-up is acked in one message, then served
 *
 * It sends READY=1 to NOTIFY_SOCKET once it serves. Build: cc -O2 -o cworker cworker.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAXCONN 65536
#define BATCH 64

static char body[64], resp_ka[256], resp_close[256];
static int len_ka, len_close;
static char *inbuf[MAXCONN];
static int inlen[MAXCONN];
static int ep; /* the epoll set */
static int rr; /* PREFORK_MODE=rr: connections come over the handoff channel */

static void die(const char *what) {
	fprintf(stderr, "cworker: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void notify_ready(void) {
	const char *path = getenv("NOTIFY_SOCKET");
	if (!path || !*path)
		return;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	size_t n = strlen(path);
	if (n >= sizeof(sa.sun_path))
		return;
	memcpy(sa.sun_path, path, n);
	if (sa.sun_path[0] == '@')
		sa.sun_path[0] = 0;
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	sendto(fd, "READY=1", 7, MSG_NOSIGNAL, (struct sockaddr *)&sa, offsetof(struct sockaddr_un, sun_path) + n);
	close(fd);
}

static void add(int ep, int fd) {
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		die("epoll_ctl");
}

/* drop closes a connection. In rr mode it leaves the epoll set first: close()
 * alone does not remove it while another descriptor refers to the same
 * socket, and prefork holds one until it has read the ack. The stale entry
 * would keep reporting the closed number (level-triggered: at every wait,
 * until prefork closes its copy), and by then the number may be another
 * connection's. */
static void drop(int fd) {
	free(inbuf[fd]);
	inbuf[fd] = NULL;
	inlen[fd] = 0;
	if (rr)
		epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
	close(fd);
}

/* serve reads what the client sent and answers every complete request. */
static void serve(int fd) {
	if (!inbuf[fd] && !(inbuf[fd] = malloc(4096)))
		die("malloc");
	for (;;) {
		ssize_t n = read(fd, inbuf[fd] + inlen[fd], 4095 - inlen[fd]);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			drop(fd);
			return;
		}
		inlen[fd] += n;
		inbuf[fd][inlen[fd]] = 0;
		char *end;
		while ((end = strstr(inbuf[fd], "\r\n\r\n"))) {
			int closing = memmem(inbuf[fd], end - inbuf[fd], "onnection: close", 16) != NULL;
			const char *r = closing ? resp_close : resp_ka;
			int rl = closing ? len_close : len_ka;
			if (write(fd, r, rl) != rl || closing) {
				drop(fd);
				return;
			}
			int used = end + 4 - inbuf[fd];
			memmove(inbuf[fd], end + 4, inlen[fd] - used + 1);
			inlen[fd] -= used;
		}
		if (inlen[fd] >= 4095) {
			drop(fd);
			return;
		}
	}
}

/* MSGFDS: connections one handoff message may carry. The rr handoff protocol sends one; the
 * reference master's -batch K (an extension measured in bench/findings.md)
 * sends up to K, as K 8-byte headers and K descriptors. */
#define MSGFDS 16

/* receive takes every connection queued on the handoff channel, acks them in
 * one message and adds them to the loop. */
static void receive(int ep, int ch) {
	uint32_t acks[BATCH];
	int n = 0;
	while (n + MSGFDS <= BATCH) {
		unsigned char msg[8 * MSGFDS];
		union {
			struct cmsghdr h;
			char b[CMSG_SPACE(MSGFDS * sizeof(int))];
		} cm;
		struct iovec iov = {msg, sizeof msg};
		struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.b, .msg_controllen = sizeof cm.b};
		ssize_t r = recvmsg(ch, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EAGAIN)
			break;
		if (r <= 0)
			exit(0); /* prefork closed the channel */
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		int k = (int)r / 8;
		if (r % 8 != 0 || !c || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(k * sizeof(int))) {
			fprintf(stderr, "cworker: bad handoff message\n");
			exit(2);
		}
		for (int i = 0; i < k; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
			memcpy(&acks[n++], msg + 8 * i, 4); /* the sequence number, already big-endian */
			if (fd >= MAXCONN) {
				close(fd);
				continue;
			}
			fcntl(fd, F_SETFL, O_NONBLOCK);
			add(ep, fd);
		}
	}
	if (n > 0 && write(ch, acks, 4 * n) != 4 * n)
		exit(0);
}

int main(void) {
	const char *slot = getenv("PREFORK_WORKER");
	snprintf(body, sizeof body, "w=%s pid=%d\n", slot ? slot : "-", (int)getpid());
	len_ka = snprintf(resp_ka, sizeof resp_ka,
	                  "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n\r\n%s", strlen(body), body);
	len_close = snprintf(resp_close, sizeof resp_close,
	                     "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
	                     strlen(body), body);
	const char *mode = getenv("PREFORK_MODE");
	rr = mode && strcmp(mode, "rr") == 0;
	int nl = rr ? 1 : (getenv("LISTEN_FDS") ? atoi(getenv("LISTEN_FDS")) : 0);
	if (nl < 1) {
		fprintf(stderr, "cworker: not started by prefork (no LISTEN_FDS, no PREFORK_MODE=rr)\n");
		return 2;
	}
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		die("epoll_create1");
	for (int i = 0; i < nl; i++) {
		fcntl(3 + i, F_SETFD, FD_CLOEXEC);
		fcntl(3 + i, F_SETFL, O_NONBLOCK);
		add(ep, 3 + i);
	}
	notify_ready();
	struct epoll_event evs[BATCH];
	for (;;) {
		int n = epoll_wait(ep, evs, BATCH, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("epoll_wait");
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd >= 3 + nl) {
				serve(fd);
			} else if (rr) {
				receive(ep, fd);
			} else {
				for (;;) {
					int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
					if (c < 0)
						break;
					if (c >= MAXCONN) {
						close(c);
						continue;
					}
					add(ep, c);
				}
			}
		}
	}
}
