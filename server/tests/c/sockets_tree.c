/* A process tree's connections across thaw snapshot + thaw restore (issue
 * 19): run by cli_sockets.rs as `sockets_tree TCP4_PORT UNIX_SERVER`. The
 * parent connects to the test's echo servers (TCP and a Unix path) and
 * forks a child that holds the Unix connection too (inherited), then
 * blocks reading a pipe. It prints "ready PID" and waits for a byte on
 * stdin. In the copy, the parent checks both connections are cut (poll,
 * read, send) and reconnects to both, the child checks its Unix one is
 * cut; the parent prints "ok". */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

static int connect4(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
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

static int is_cut(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 5000) != 1 || !(p.revents & (POLLHUP | POLLERR)))
        return 1;
    char c;
    ssize_t n = read(fd, &c, 1);
    if (!(n == 0 || (n < 0 && errno == ECONNRESET)))
        return 2;
    n = send(fd, "x", 1, MSG_NOSIGNAL);
    if (!(n < 0 && (errno == EPIPE || errno == ECONNRESET)))
        return 3;
    return 0;
}

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

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    int port = atoi(argv[1]);
    const char *unix_server = argv[2];
    /* The pipes first: fds 3 and 4 are the runtime protocol's numbers, on
     * which a Unix socket would be taken for the protocol's. */
    int go[2], done[2];
    CHECK(pipe(go) == 0 && pipe(done) == 0);
    int tcp = connect4(port);
    CHECK(tcp >= 0 && echoes(tcp));
    int un = connect_unix(unix_server);
    CHECK(un >= 0 && echoes(un));
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        close(go[1]);
        close(done[0]);
        close(tcp);
        char c;
        if (read(go[0], &c, 1) != 1)
            _exit(3);
        char r = is_cut(un) == 0 ? 'y' : 'n';
        write(done[1], &r, 1);
        _exit(0);
    }
    close(go[0]);
    close(done[1]);
    printf("ready %d\n", getpid());
    fflush(stdout);
    char c;
    if (read(0, &c, 1) != 1)
        _exit(3);
    int r;
    CHECK((r = is_cut(tcp)) == 0);
    CHECK(write(go[1], "g", 1) == 1);
    char child_says = 0;
    CHECK(read(done[0], &child_says, 1) == 1 && child_says == 'y');
    CHECK((r = is_cut(un)) == 0);
    int status;
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(tcp);
    tcp = connect4(port);
    CHECK(tcp >= 0 && echoes(tcp));
    close(un);
    un = connect_unix(unix_server);
    CHECK(un >= 0 && echoes(un));
    return ok();
}
