/* inotify (issue 19): a non-blocking instance watching a directory
 * (IN_CREATE | IN_DELETE, wd 1) and a file in it (IN_MODIFY, wd 3; wd 2
 * was another file's watch, removed, and its IN_IGNORED event read). The
 * copy finds its watches at their wds: creating a file in the directory
 * and writing the file each report one event with the right wd, mask and
 * name; the next watch gets a wd after the saved ones. argv[1] is the
 * directory (made by the test). Prints "ok". */
#include "common.h"
#include <sys/inotify.h>

static char dir[512], file[600], other[600], created[600];

/* The next event, or -1 when none is queued. */
static int next_event(int fd, struct inotify_event *ev, size_t size) {
    ssize_t n = read(fd, ev, size);
    return n > 0 ? 0 : -1;
}

int main(int argc, char **argv) {
    CHECK(argc == 2);
    snprintf(dir, sizeof dir, "%s", argv[1]);
    snprintf(file, sizeof file, "%s/f", dir);
    snprintf(other, sizeof other, "%s/g", dir);
    snprintf(created, sizeof created, "%s/new-%d", dir, (int)getpid());
    int f = open(file, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    CHECK(f >= 0 && close(f) == 0);
    f = open(other, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    CHECK(f >= 0 && close(f) == 0);
    int in = inotify_init1(IN_NONBLOCK);
    CHECK(in >= 0);
    CHECK(inotify_add_watch(in, dir, IN_CREATE | IN_DELETE) == 1);
    CHECK(inotify_add_watch(in, other, IN_MODIFY) == 2);
    CHECK(inotify_add_watch(in, file, IN_MODIFY) == 3);
    CHECK(inotify_rm_watch(in, 2) == 0);
    union {
        struct inotify_event ev;
        char bytes[sizeof(struct inotify_event) + 256];
    } buf;
    /* The IN_IGNORED of wd 2 (queued events would refuse the capture). */
    while (next_event(in, &buf.ev, sizeof buf) == 0)
        ;

    ready();

    CHECK(fcntl(in, F_GETFL) & O_NONBLOCK);
    CHECK(next_event(in, &buf.ev, sizeof buf) == -1 && errno == EAGAIN);
    f = open(created, O_CREAT | O_WRONLY, 0644);
    CHECK(f >= 0 && close(f) == 0);
    CHECK(next_event(in, &buf.ev, sizeof buf) == 0);
    CHECK(buf.ev.wd == 1 && (buf.ev.mask & IN_CREATE) && strcmp(buf.ev.name, strrchr(created, '/') + 1) == 0);
    f = open(file, O_WRONLY | O_APPEND);
    CHECK(f >= 0 && write(f, "x", 1) == 1 && close(f) == 0);
    CHECK(next_event(in, &buf.ev, sizeof buf) == 0);
    CHECK(buf.ev.wd == 3 && (buf.ev.mask & IN_MODIFY));
    CHECK(unlink(created) == 0);
    CHECK(next_event(in, &buf.ev, sizeof buf) == 0);
    CHECK(buf.ev.wd == 1 && (buf.ev.mask & IN_DELETE));
    int fresh = inotify_add_watch(in, other, IN_MODIFY);
    CHECK(fresh > 3);
    return ok();
}
