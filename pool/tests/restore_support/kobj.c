/* Kernel objects restored with their state (restore_kobj.rs, issue 14
 * acceptance 2). Sets up, then prints "ready" and waits for a byte on
 * stdin; the copy then checks every object and prints "ok" (or what
 * failed, one line each, then "failed"):
 *
 *   fd 10  eventfd, counter 7                 fd 11 dup of 10
 *   fd 12  eventfd, semaphore, counter 3, non-blocking
 *   fd 13  signalfd for SIGUSR1 (blocked), non-blocking
 *   fd 14  timerfd, monotonic, periodic 50 ms, running (unread ticks)
 *   fd 15  timerfd, monotonic, one shot that expired (1 unread tick)
 *   fd 16  timerfd, monotonic, one shot 30 s away
 *   fd 17  timerfd, realtime, absolute deadline now + 40 s
 *   fd 18/19 pipe with "queued bytes" in it    fd 20 dup of 19
 *   fd 21  memfd "thaw-test" with 5000 bytes, position 100, F_SEAL_WRITE
 *   fd 22  epoll: 10 (IN, data 0x1111), 18 (IN|ET, data 0x2222),
 *          16 (IN, data 0x3333), 13 (IN, data 0x4444)
 *   fd 23/24 stream socket pair, "to 23" queued at 23 (partly read
 *          already), "to 24!" at 24; fd 24 non-blocking
 *   fd 25/26 datagram socket pair, nothing queued
 *   fd 27  memfd "thaw-shared", 8192 bytes, mapped shared read-write with
 *          "hello" written through the mapping
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static int failed;
#define CHECK(cond, ...) do { if (!(cond)) { printf("FAIL %s:%d ", __FILE__, __LINE__); printf(__VA_ARGS__); printf(" (errno %d)\n", errno); failed = 1; } } while (0)

static void at(int fd, int want) {
    if (fd != want) {
        if (dup2(fd, want) != want) { perror("dup2"); exit(2); }
        close(fd);
    }
}

static int64_t ns(struct timespec t) { return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec; }

static int64_t deadline;
static char *shared_map;

static void setup(void) {
    at(eventfd(7, 0), 10);
    fcntl(10, F_SETFD, FD_CLOEXEC);
    at(dup(10), 11);
    at(eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK), 12);

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, NULL);
    sigdelset(&set, SIGUSR2);
    at(signalfd(-1, &set, SFD_NONBLOCK), 13);

    struct itimerspec periodic = {{0, 50000000}, {0, 50000000}};
    at(timerfd_create(CLOCK_MONOTONIC, 0), 14);
    timerfd_settime(14, 0, &periodic, NULL);
    struct itimerspec soon = {{0, 0}, {0, 1000000}};
    at(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK), 15);
    timerfd_settime(15, 0, &soon, NULL);
    struct itimerspec later = {{0, 0}, {30, 0}};
    at(timerfd_create(CLOCK_MONOTONIC, 0), 16);
    timerfd_settime(16, 0, &later, NULL);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    deadline = ns(now) + 40LL * 1000000000LL;
    struct itimerspec absolute = {{0, 0}, {deadline / 1000000000LL, deadline % 1000000000LL}};
    at(timerfd_create(CLOCK_REALTIME, 0), 17);
    timerfd_settime(17, TFD_TIMER_ABSTIME, &absolute, NULL);

    int p[2];
    if (pipe(p)) { perror("pipe"); exit(2); }
    at(p[0], 18);
    at(p[1], 19);
    at(dup(19), 20);
    if (write(19, "queued bytes", 12) != 12) exit(2);

    at(memfd_create("thaw-test", MFD_ALLOW_SEALING), 21);
    char buf[5000];
    for (int i = 0; i < 5000; i++) buf[i] = (char)('a' + i % 26);
    if (write(21, buf, sizeof buf) != sizeof buf) exit(2);
    lseek(21, 100, SEEK_SET);
    fcntl(21, F_ADD_SEALS, F_SEAL_WRITE);

    at(epoll_create1(0), 22);
    struct epoll_event e;
    e.events = EPOLLIN; e.data.u64 = 0x1111; epoll_ctl(22, EPOLL_CTL_ADD, 10, &e);
    e.events = EPOLLIN | EPOLLET; e.data.u64 = 0x2222; epoll_ctl(22, EPOLL_CTL_ADD, 18, &e);
    e.events = EPOLLIN; e.data.u64 = 0x3333; epoll_ctl(22, EPOLL_CTL_ADD, 16, &e);
    e.events = EPOLLIN; e.data.u64 = 0x4444; epoll_ctl(22, EPOLL_CTL_ADD, 13, &e);

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) { perror("socketpair"); exit(2); }
    at(sv[0], 23);
    at(sv[1], 24);
    fcntl(24, F_SETFL, O_NONBLOCK);
    if (write(24, "xxto 23", 7) != 7 || write(23, "to 24!", 6) != 6) exit(2);
    char two[2];
    if (read(23, two, 2) != 2) exit(2);
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv)) { perror("socketpair"); exit(2); }
    at(sv[0], 25);
    at(sv[1], 26);

    at(memfd_create("thaw-shared", 0), 27);
    if (ftruncate(27, 8192)) exit(2);
    shared_map = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, 27, 0);
    if (shared_map == MAP_FAILED) { perror("mmap memfd"); exit(2); }
    memcpy(shared_map + 4096, "hello", 5);

    /* Let the periodic timer and the one shot expire unread. */
    usleep(200000);
}

static void check(void) {
    /* A copy that hangs fails the test instead of hanging it. */
    alarm(60);
    uint64_t v = 0;
    /* epoll first: what is ready, with the saved data. */
    struct epoll_event ev[8];
    int n = epoll_wait(22, ev, 8, 0);
    int seen1111 = 0, seen2222 = 0, seen3333 = 0, seen4444 = 0;
    for (int i = 0; i < n; i++) {
        if (ev[i].data.u64 == 0x1111) seen1111 = 1;
        if (ev[i].data.u64 == 0x2222) seen2222 = 1;
        if (ev[i].data.u64 == 0x3333) seen3333 = 1;
        if (ev[i].data.u64 == 0x4444) seen4444 = 1;
    }
    CHECK(n >= 2 && seen1111 && seen2222 && !seen3333 && !seen4444,
          "epoll_wait: %d ready (1111 %d, 2222 %d, 3333 %d, 4444 %d)", n, seen1111, seen2222, seen3333, seen4444);
    /* The registrations name the copy's descriptors. */
    struct epoll_event e = {EPOLLIN, {.u64 = 0x5555}};
    CHECK(epoll_ctl(22, EPOLL_CTL_MOD, 16, &e) == 0, "epoll_ctl MOD of fd 16");
    CHECK(epoll_ctl(22, EPOLL_CTL_ADD, 18, &e) == -1 && errno == EEXIST, "fd 18 is registered");

    /* eventfd: the counter, through the dup too. */
    CHECK(write(11, &(uint64_t){5}, 8) == 8, "write eventfd dup");
    CHECK(read(10, &v, 8) == 8 && v == 12, "eventfd counter %llu, want 7 + 5", (unsigned long long)v);
    CHECK(fcntl(10, F_GETFD) & FD_CLOEXEC, "eventfd close-on-exec");
    CHECK(read(12, &v, 8) == 8 && v == 1, "semaphore eventfd reads 1, got %llu", (unsigned long long)v);
    CHECK(read(12, &v, 8) == 8 && read(12, &v, 8) == 8, "semaphore eventfd has 3");
    CHECK(read(12, &v, 8) == -1 && errno == EAGAIN, "semaphore eventfd empty and non-blocking");

    /* signalfd: SIGUSR1 is read through it, SIGUSR2 is not in its mask. */
    CHECK(read(13, &(struct signalfd_siginfo){0}, sizeof(struct signalfd_siginfo)) == -1 && errno == EAGAIN,
          "signalfd empty");
    kill(getpid(), SIGUSR2);
    CHECK(read(13, &(struct signalfd_siginfo){0}, sizeof(struct signalfd_siginfo)) == -1 && errno == EAGAIN,
          "signalfd ignores SIGUSR2");
    kill(getpid(), SIGUSR1);
    struct signalfd_siginfo si;
    CHECK(read(13, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR1, "signalfd reads SIGUSR1");

    /* timerfds. */
    struct itimerspec cur;
    timerfd_gettime(14, &cur);
    CHECK(cur.it_interval.tv_sec == 0 && cur.it_interval.tv_nsec == 50000000, "periodic interval %ld.%09ld",
          (long)cur.it_interval.tv_sec, cur.it_interval.tv_nsec);
    CHECK(read(14, &v, 8) == 8 && v >= 3, "periodic timer: %llu expirations, the unread ones carried over",
          (unsigned long long)v);
    CHECK(read(14, &v, 8) == 8 && v >= 1, "periodic timer fires again");
    CHECK(read(15, &v, 8) == 8 && v == 1, "expired one shot: 1 unread expiration, got %llu", (unsigned long long)v);
    timerfd_gettime(15, &cur);
    CHECK(ns(cur.it_value) == 0, "expired one shot stays disarmed");
    timerfd_gettime(16, &cur);
    CHECK(ns(cur.it_value) > 25LL * 1000000000LL && ns(cur.it_value) <= 30LL * 1000000000LL,
          "30 s timer has %lld ns left", (long long)ns(cur.it_value));
    struct timespec now;
    timerfd_gettime(17, &cur);
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t drift = ns(now) + ns(cur.it_value) - deadline;
    CHECK(ns(cur.it_value) > 0 && drift > -1000000000LL && drift < 1000000000LL,
          "absolute realtime deadline kept (off by %lld ns)", (long long)drift);

    /* pipe: the queued bytes, then a write through the dup. */
    char buf[64] = {0};
    CHECK(read(18, buf, sizeof buf) == 12 && memcmp(buf, "queued bytes", 12) == 0, "pipe data %s", buf);
    CHECK(write(20, "more", 4) == 4 && read(18, buf, sizeof buf) == 4 && memcmp(buf, "more", 4) == 0,
          "pipe works");
    CHECK((fcntl(18, F_GETFL) & O_ACCMODE) == O_RDONLY && (fcntl(19, F_GETFL) & O_ACCMODE) == O_WRONLY,
          "pipe ends keep their access modes");

    /* socket pairs: what each end had queued, then both ways. */
    memset(buf, 0, sizeof buf);
    CHECK(read(23, buf, sizeof buf) == 5 && memcmp(buf, "to 23", 5) == 0, "pair end 23 queued %s", buf);
    memset(buf, 0, sizeof buf);
    CHECK(read(24, buf, sizeof buf) == 6 && memcmp(buf, "to 24!", 6) == 0, "pair end 24 queued %s", buf);
    CHECK(read(24, buf, sizeof buf) == -1 && errno == EAGAIN, "pair end 24 non-blocking and empty");
    CHECK(write(23, "ping", 4) == 4 && read(24, buf, sizeof buf) == 4 && memcmp(buf, "ping", 4) == 0, "pair works");
    int type = 0;
    socklen_t tlen = sizeof type;
    getsockopt(25, SOL_SOCKET, SO_TYPE, &type, &tlen);
    CHECK(type == SOCK_DGRAM, "datagram pair type %d", type);
    CHECK(send(25, "d1", 2, 0) == 2 && send(25, "d22", 3, 0) == 3 && recv(26, buf, sizeof buf, 0) == 2 &&
          recv(26, buf, sizeof buf, 0) == 3, "datagram pair keeps message boundaries");

    /* memfd: content from the position, seals. */
    CHECK(read(21, buf, 4) == 4 && memcmp(buf, "wxyz", 4) == 0, "memfd at 100: %.4s", buf);
    CHECK(lseek(21, 0, SEEK_END) == 5000, "memfd size");
    CHECK(fcntl(21, F_GET_SEALS) == F_SEAL_WRITE, "memfd seals %#x", fcntl(21, F_GET_SEALS));
    CHECK(pwrite(21, "x", 1, 0) == -1 && errno == EPERM, "sealed memfd refuses writes");
    char link[128] = {0};
    readlink("/proc/self/fd/21", link, sizeof link - 1);
    CHECK(strncmp(link, "/memfd:thaw-test", 16) == 0, "memfd name %s", link);

    /* memfd mapped shared: the mapping and the descriptor are one file. */
    CHECK(memcmp(shared_map + 4096, "hello", 5) == 0, "shared memfd mapping holds %.5s", shared_map + 4096);
    memcpy(shared_map, "world", 5);
    memset(buf, 0, sizeof buf);
    CHECK(pread(27, buf, 5, 0) == 5 && memcmp(buf, "world", 5) == 0, "write through the mapping reaches the memfd");
    CHECK(pwrite(27, "fd!", 3, 100) == 3 && memcmp(shared_map + 100, "fd!", 3) == 0,
          "write to the memfd shows in the mapping");

    printf(failed ? "failed\n" : "ok\n");
}

int main(void) {
    setup();
    printf("ready\n");
    fflush(stdout);
    char c;
    while (read(0, &c, 1) < 0 && errno == EINTR) {}
    check();
    fflush(stdout);
    return failed;
}
