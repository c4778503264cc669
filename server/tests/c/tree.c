/* A process tree (issue 14, acceptance 3): a parent, a helper child in its
 * own process group, and a grandchild in its own session.
 *
 *   parent P   setsid() first (leads its session); fds 10/11 the pipes to H
 *     helper H   setpgid(0, 0) (leads a group in P's session); its stdin
 *                and stdout the pipes from/to P (as a subprocess's are:
 *                descriptors of the runtime protocol's range, recorded as
 *                pipes of the tree because both ends are in it), fd 12 a
 *                socket pair end to G
 *       grandchild G   setsid() (leads its own session); fd 10 the other
 *                      end of the socket pair
 *
 * P reads commands on stdin, one a line:
 *   n X    P sends X to H over the pipe, H sends it to G over the socket
 *          pair, G answers X + 1, H answers 2 * (X + 1); P prints
 *          "answer V"
 *   w X    P sends X to H like "n X" but does not read the answer: it
 *          waits, queued in the pipe from H (or wherever the tree is with
 *          it when captured); P prints "sent"
 *   r      P reads that answer: "answer V"
 *   ids    P prints its ids, then H's and G's (asked through the pipe and
 *          the socket pair): "ids ROLE pid=.. ppid=.. pgid=.. sid=.. same"
 *          ("changed" when they differ from those the process recorded
 *          when it started; P's ppid is not compared, it is outside)
 * At start P prints "ready P H G". Every process exits at end of input. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

struct ids {
    int pid, ppid, pgid, sid;
};

static struct ids now(void) {
    struct ids i = {getpid(), getppid(), getpgrp(), getsid(0)};
    return i;
}

static struct ids recorded;

/* "ids ROLE pid=.. ppid=.. pgid=.. sid=.. same|changed\n" into buf. */
static void describe(char *buf, size_t len, const char *role, int check_ppid) {
    struct ids i = now();
    int same = i.pid == recorded.pid && i.pgid == recorded.pgid &&
               i.sid == recorded.sid && (!check_ppid || i.ppid == recorded.ppid);
    snprintf(buf, len, "ids %s pid=%d ppid=%d pgid=%d sid=%d %s\n", role, i.pid,
             check_ppid ? i.ppid : 0, i.pgid, i.sid, same ? "same" : "changed");
}

/* Reads one line (without its newline) from fd; 0 at end of input. */
static int read_line(int fd, char *buf, size_t len) {
    size_t n = 0;
    while (n + 1 < len) {
        char c;
        ssize_t r = read(fd, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return n > 0;
        if (c == '\n')
            break;
        buf[n++] = c;
    }
    buf[n] = 0;
    return 1;
}

static void write_all(int fd, const char *s) {
    size_t len = strlen(s);
    while (len > 0) {
        ssize_t w = write(fd, s, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            exit(3);
        s += w;
        len -= w;
    }
}

static void null_stdio(void) {
    int n = open("/dev/null", O_RDWR);
    dup2(n, 0);
    dup2(n, 1);
    if (n > 2)
        close(n);
}

/* Keeps fds 0-2 and [keep_from, keep_to]; closes the rest. */
static void keep_only(int keep_from, int keep_to) {
    syscall(SYS_close_range, 3, keep_from - 1, 0);
    syscall(SYS_close_range, keep_to + 1, ~0U, 0);
}

static void grandchild(void) {
    null_stdio();
    setsid();
    recorded = now();
    char line[256], out[256];
    while (read_line(10, line, sizeof line)) {
        if (line[0] == 'n') {
            snprintf(out, sizeof out, "%ld\n", atol(line + 2) + 1);
        } else {
            describe(out, sizeof out, "grandchild", 1);
        }
        write_all(10, out);
    }
    exit(0);
}

static void helper(void) {
    setpgid(0, 0);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        exit(4);
    pid_t g = fork();
    if (g == 0) {
        dup2(sv[1], 10);
        keep_only(10, 10);
        grandchild();
    }
    dup2(sv[0], 12);
    close(sv[0]);
    close(sv[1]);
    recorded = now();
    char started[64];
    snprintf(started, sizeof started, "%d\n", (int)g);
    write_all(1, started);
    char line[256], out[512], reply[256];
    while (read_line(0, line, sizeof line)) {
        if (line[0] == 'n') {
            snprintf(out, sizeof out, "%s\n", line);
            write_all(12, out);
            if (!read_line(12, reply, sizeof reply))
                exit(5);
            snprintf(out, sizeof out, "%ld\n", 2 * atol(reply));
        } else {
            describe(out, sizeof out, "helper", 1);
            write_all(12, "i\n");
            if (!read_line(12, reply, sizeof reply))
                exit(5);
            strncat(out, reply, sizeof out - strlen(out) - 2);
            strcat(out, "\n");
        }
        write_all(1, out);
    }
    exit(0);
}

int main(void) {
    if (setsid() < 0) {
        perror("setsid");
        return 2;
    }
    int to_helper[2], from_helper[2];
    if (pipe(to_helper) != 0 || pipe(from_helper) != 0)
        return 2;
    pid_t h = fork();
    if (h == 0) {
        dup2(to_helper[0], 0);
        dup2(from_helper[1], 1);
        syscall(SYS_close_range, 3, ~0U, 0);
        helper();
    }
    dup2(to_helper[1], 10);
    dup2(from_helper[0], 11);
    keep_only(10, 11);
    recorded = now();
    char line[256], out[512];
    if (!read_line(11, line, sizeof line))
        return 2;
    printf("ready %d %d %s\n", (int)getpid(), (int)h, line);
    fflush(stdout);
    while (read_line(0, line, sizeof line)) {
        if (line[0] == 'n') {
            snprintf(out, sizeof out, "%s\n", line);
            write_all(10, out);
            if (!read_line(11, line, sizeof line))
                return 5;
            printf("answer %s\n", line);
        } else if (line[0] == 'w') {
            snprintf(out, sizeof out, "n %s\n", line + 2);
            write_all(10, out);
            printf("sent\n");
        } else if (strcmp(line, "r") == 0) {
            if (!read_line(11, line, sizeof line))
                return 5;
            printf("answer %s\n", line);
        } else if (strcmp(line, "ids") == 0) {
            describe(out, sizeof out, "parent", 0);
            fputs(out, stdout);
            write_all(10, "i\n");
            for (int i = 0; i < 2; i++) {
                if (!read_line(11, line, sizeof line))
                    return 5;
                printf("%s\n", line);
            }
        }
        fflush(stdout);
    }
    return 0;
}
