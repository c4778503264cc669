/* Sockets across thaw snapshot + thaw restore (issue 19): run by
 * cli_sockets.rs as `sockets TCP4_PORT TCP6_PORT UNIX_SERVER UNIX_PATH`,
 * where the test serves an echo on 127.0.0.1:TCP4_PORT, [::1]:TCP6_PORT and
 * the Unix path UNIX_SERVER.
 *
 * Before the capture it holds: a TCP client connected to each echo server
 * and a Unix stream client connected to UNIX_SERVER (cut in the copy), a
 * TCP listener on 127.0.0.1 (non-blocking, SO_REUSEADDR, TCP_NODELAY,
 * SO_RCVBUF, registered with an epoll instance, dup'ed), a TCP listener on
 * [::1] (IPV6_V6ONLY), a UDP socket (SO_REUSEPORT), Unix listeners at
 * UNIX_PATH and at an abstract name, a netlink route socket. It prints
 * "ready PID LISTEN4 LISTEN6 UDP ABSTRACT" and waits for a byte on stdin.
 *
 * In the copy it checks every option and address read back the same, that
 * each cut connection reports it (poll, read, send), that it can reconnect
 * to the echo servers, and that the netlink socket answers an RTM_GETLINK
 * dump; prints "serving", then waits for the test to connect to each
 * listener and send a datagram, and prints "ok". */
#include "common.h"
#include <arpa/inet.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>

static int opt(int fd, int level, int name) {
    int v = -1;
    socklen_t len = sizeof v;
    if (getsockopt(fd, level, name, &v, &len) != 0)
        return -100;
    return v;
}

static int on(int fd, int level, int name) {
    int one = 1;
    return setsockopt(fd, level, name, &one, sizeof one);
}

static int port_of(int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

static int connect4(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        return -1;
    return fd;
}

static int connect6(int port) {
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
    a.sin6_addr = in6addr_loopback;
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        return -1;
    return fd;
}

static int connect_unix(const char *path) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        return -1;
    return fd;
}

/* A connection that is gone: poll says so, a read sees a reset or end of
 * file, a send fails. Returns 0 when all hold. */
static int is_cut(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLOUT};
    if (poll(&p, 1, 5000) != 1 || !(p.revents & (POLLHUP | POLLERR)))
        return 1;
    char c;
    ssize_t n = read(fd, &c, 1);
    if (!(n == 0 || (n < 0 && errno == ECONNRESET)))
        return 2;
    n = read(fd, &c, 1);
    if (n != 0)
        return 3;
    n = send(fd, "x", 1, MSG_NOSIGNAL);
    if (!(n < 0 && (errno == EPIPE || errno == ECONNRESET)))
        return 4;
    return 0;
}

/* Sends "ping" on fd and expects it echoed. */
static int echoes(int fd) {
    char buf[4];
    if (write(fd, "ping", 4) != 4)
        return 0;
    size_t got = 0;
    while (got < 4) {
        ssize_t n = read(fd, buf + got, 4 - got);
        if (n <= 0)
            return 0;
        got += n;
    }
    return memcmp(buf, "ping", 4) == 0;
}

/* Reads one byte 'x' from a freshly accepted connection. */
static int accepts(int listener) {
    struct pollfd p = {.fd = listener, .events = POLLIN};
    if (poll(&p, 1, 10000) != 1)
        return 0;
    int c = accept(listener, NULL, NULL);
    if (c < 0)
        return 0;
    char x = 0;
    int ok = read(c, &x, 1) == 1 && x == 'x';
    close(c);
    return ok;
}

/* An RTM_GETLINK dump on a netlink route socket: at least one link (lo). */
static int links(int nl) {
    struct {
        struct nlmsghdr h;
        struct ifinfomsg i;
    } req = {0};
    req.h.nlmsg_len = sizeof req;
    req.h.nlmsg_type = RTM_GETLINK;
    req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.h.nlmsg_seq = 42;
    req.i.ifi_family = AF_UNSPEC;
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    if (sendto(nl, &req, sizeof req, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0)
        return -1;
    int count = 0;
    static char buf[65536];
    for (;;) {
        ssize_t n = recv(nl, buf, sizeof buf, 0);
        if (n <= 0)
            return -2;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type == NLMSG_DONE)
                return count;
            if (h->nlmsg_type == NLMSG_ERROR)
                return -3;
            if (h->nlmsg_type == RTM_NEWLINK && h->nlmsg_seq == 42)
                count++;
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 5)
        return 2;
    int tcp4_port = atoi(argv[1]), tcp6_port = atoi(argv[2]);
    const char *unix_server = argv[3], *unix_path = argv[4];

    /* Connections to the test's servers, with options. */
    int client4 = connect4(tcp4_port);
    CHECK(client4 >= 0);
    CHECK(on(client4, IPPROTO_TCP, TCP_NODELAY) == 0);
    struct timeval tv = {.tv_sec = 3, .tv_usec = 250000};
    CHECK(setsockopt(client4, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0);
    /* Read back in the kernel's ticks (3.252 s at HZ=250). */
    socklen_t tvlen = sizeof tv;
    CHECK(getsockopt(client4, SOL_SOCKET, SO_SNDTIMEO, &tv, &tvlen) == 0);
    CHECK(tv.tv_sec == 3 && tv.tv_usec >= 250000);
    CHECK(echoes(client4));
    int client6 = connect6(tcp6_port);
    CHECK(client6 >= 0);
    CHECK(on(client6, SOL_SOCKET, SO_KEEPALIVE) == 0);
    int unix_client = connect_unix(unix_server);
    CHECK(unix_client >= 0);
    CHECK(echoes(unix_client));

    /* A TCP listener with options, non-blocking, in an epoll, dup'ed. */
    int listen4 = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    CHECK(listen4 >= 0);
    CHECK(on(listen4, SOL_SOCKET, SO_REUSEADDR) == 0);
    CHECK(on(listen4, IPPROTO_TCP, TCP_NODELAY) == 0);
    int rcvbuf = 65536;
    CHECK(setsockopt(listen4, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) == 0);
    int rcvbuf_read = opt(listen4, SOL_SOCKET, SO_RCVBUF);
    struct sockaddr_in a4 = {.sin_family = AF_INET};
    a4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(listen4, (struct sockaddr *)&a4, sizeof a4) == 0);
    CHECK(listen(listen4, 7) == 0);
    int listen4_port = port_of(listen4);
    int listen4_dup = dup(listen4);
    CHECK(listen4_dup >= 0);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    CHECK(ep >= 0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0x4444};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, listen4, &ev) == 0);

    /* An IPv6-only listener, close-on-exec. */
    int listen6 = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(listen6 >= 0);
    CHECK(on(listen6, IPPROTO_IPV6, IPV6_V6ONLY) == 0);
    CHECK(on(listen6, SOL_SOCKET, SO_REUSEADDR) == 0);
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6};
    a6.sin6_addr = in6addr_loopback;
    CHECK(bind(listen6, (struct sockaddr *)&a6, sizeof a6) == 0);
    CHECK(listen(listen6, 3) == 0);
    int listen6_port = port_of(listen6);

    /* A bound UDP socket. */
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    CHECK(udp >= 0);
    CHECK(on(udp, SOL_SOCKET, SO_REUSEPORT) == 0);
    CHECK(bind(udp, (struct sockaddr *)&a4, sizeof a4) == 0);
    int udp_port = port_of(udp);

    /* Unix listeners: a path and an abstract name. */
    int listen_path = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(listen_path >= 0);
    struct sockaddr_un up = {.sun_family = AF_UNIX};
    strncpy(up.sun_path, unix_path, sizeof up.sun_path - 1);
    CHECK(bind(listen_path, (struct sockaddr *)&up, sizeof up) == 0);
    CHECK(listen(listen_path, 4) == 0);
    char abstract[64];
    snprintf(abstract, sizeof abstract, "thaw-sockets-%d", getpid());
    int listen_abstract = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    CHECK(listen_abstract >= 0);
    struct sockaddr_un ua = {.sun_family = AF_UNIX};
    memcpy(ua.sun_path + 1, abstract, strlen(abstract));
    socklen_t ua_len = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(abstract);
    CHECK(bind(listen_abstract, (struct sockaddr *)&ua, ua_len) == 0);
    CHECK(listen(listen_abstract, 2) == 0);

    /* A netlink route socket, bound. */
    int nl = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    CHECK(nl >= 0);
    struct sockaddr_nl nla = {.nl_family = AF_NETLINK};
    CHECK(bind(nl, (struct sockaddr *)&nla, sizeof nla) == 0);
    CHECK(links(nl) > 0);

    printf("ready %d %d %d %d %s\n", getpid(), listen4_port, listen6_port, udp_port, abstract);
    fflush(stdout);
    char go;
    if (read(0, &go, 1) != 1)
        _exit(3);

    /* Options and addresses read back. */
    CHECK(opt(listen4, SOL_SOCKET, SO_REUSEADDR) == 1);
    CHECK(opt(listen4, IPPROTO_TCP, TCP_NODELAY) == 1);
    CHECK(opt(listen4, SOL_SOCKET, SO_RCVBUF) == rcvbuf_read);
    CHECK(opt(listen4, SOL_SOCKET, SO_ACCEPTCONN) == 1);
    CHECK(fcntl(listen4, F_GETFL) & O_NONBLOCK);
    CHECK(port_of(listen4) == listen4_port);
    CHECK(port_of(listen4_dup) == listen4_port);
    CHECK(opt(listen6, IPPROTO_IPV6, IPV6_V6ONLY) == 1);
    CHECK(fcntl(listen6, F_GETFD) & FD_CLOEXEC);
    CHECK(!(fcntl(listen4, F_GETFD) & FD_CLOEXEC));
    CHECK(port_of(listen6) == listen6_port);
    CHECK(opt(udp, SOL_SOCKET, SO_REUSEPORT) == 1);
    CHECK(port_of(udp) == udp_port);
    CHECK(opt(listen_abstract, SOL_SOCKET, SO_TYPE) == SOCK_SEQPACKET);
    CHECK(opt(client4, IPPROTO_TCP, TCP_NODELAY) == 1);
    struct timeval tv2 = {0};
    CHECK(getsockopt(client4, SOL_SOCKET, SO_SNDTIMEO, &tv2, &tvlen) == 0);
    CHECK(tv2.tv_sec == tv.tv_sec && tv2.tv_usec == tv.tv_usec);
    CHECK(opt(client6, SOL_SOCKET, SO_KEEPALIVE) == 1);
    CHECK(opt(client6, SOL_SOCKET, SO_DOMAIN) == AF_INET6);

    /* The connections are cut; new ones work. */
    int r;
    CHECK((r = is_cut(client4)) == 0);
    CHECK((r = is_cut(client6)) == 0);
    CHECK((r = is_cut(unix_client)) == 0);
    close(client4);
    client4 = connect4(tcp4_port);
    CHECK(client4 >= 0 && echoes(client4));
    close(client6);
    client6 = connect6(tcp6_port);
    CHECK(client6 >= 0 && echoes(client6));
    close(unix_client);
    unix_client = connect_unix(unix_server);
    CHECK(unix_client >= 0 && echoes(unix_client));

    /* The netlink socket answers. */
    CHECK(links(nl) > 0);

    printf("serving\n");
    fflush(stdout);

    /* The test connects to each listener and sends a datagram. */
    struct epoll_event got;
    CHECK(epoll_wait(ep, &got, 1, 10000) == 1 && got.data.u64 == 0x4444);
    CHECK(accepts(listen4));
    CHECK(accepts(listen6));
    CHECK(accepts(listen_path));
    CHECK(accepts(listen_abstract));
    char dgram[8] = {0};
    struct pollfd p = {.fd = udp, .events = POLLIN};
    CHECK(poll(&p, 1, 10000) == 1);
    CHECK(recv(udp, dgram, sizeof dgram, 0) == 3 && memcmp(dgram, "udp", 3) == 0);
    return ok();
}
