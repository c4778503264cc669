/* 32 threads, each blocked somewhere different when captured, each checking
 * after the restore that it kept its thread id, TLS, name and signal mask.
 *
 * Roles (thread i, i % 8): 0 untimed futex wait, 1 timed futex wait,
 * 2 pthread_cond_wait, 3 pthread_cond_timedwait, 4 nanosleep,
 * 5 spinning in user code, 6 poll with a timeout, 7 read on stdin (only
 * thread 7; thread 15 waits in an untimed epoll_wait and thread 23 in a
 * timed one, on an epoll instance watching an eventfd that thread 7 writes
 * to on "go"; thread 31 waits on the futex like role 0).
 * Thread 9 also frees, after the restore, 1 MiB of anonymous memory the
 * main thread filled before the capture (madvise MADV_DONTNEED) and checks
 * it reads zeros: in mmap mode that memory is the image, and only the
 * anonymous-memory guard's SIGSYS handler, run in the thread that trapped,
 * makes it zeros.
 * The main thread waits in pthread_join (an untimed futex wait on thread
 * 0's clear_child_tid word, which only works if the kernel clears and wakes
 * it: set_tid_address restored).
 *
 * Prints "ready <pid> <address of the 1 MiB area>" once every thread is about to block; after one byte
 * on stdin, prints one line per failed check, then "ok <n>" and exits 0,
 * or "fail <n>" and exits 1. Threads in timed waits see EINTR in a copy
 * (no restart block): they loop, as glibc's waits do. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define N 32

static atomic_int go;
static atomic_int started;
static atomic_int failures;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static pid_t tids[N];
static void *tls_addr[N];
static __thread long tls_value;
static __thread char tls_buf[64];
static atomic_long spins;
#define FREED (1 << 20)
static unsigned char *freed;
static int ep, efd;

static long futex(atomic_int *word, int op, int val, const struct timespec *ts) {
    return syscall(SYS_futex, word, op, val, ts, NULL, 0);
}

static void fail(int i, const char *what, long got, long want) {
    char line[160];
    int n = snprintf(line, sizeof line, "thread %d: %s is %ld, was %ld\n", i, what, got, want);
    write(1, line, n);
    atomic_fetch_add(&failures, 1);
}

static sigset_t mask_of(int i) {
    int sigs[6] = {SIGUSR1, SIGUSR2, SIGRTMIN + 1, SIGRTMIN + 2, SIGRTMIN + 3, SIGRTMIN + 4};
    sigset_t set;
    sigemptyset(&set);
    for (int b = 0; b < 6; b++)
        if ((i + 1) & (1 << b)) sigaddset(&set, sigs[b]);
    return set;
}

static void wait_for_go(int i) {
    int role = i % 8;
    if (role == 7 && i != 7) role = (i == 15 || i == 23) ? 8 : 0;
    switch (role) {
    case 0:
        while (!atomic_load(&go)) futex(&go, FUTEX_WAIT_PRIVATE, 0, NULL);
        break;
    case 1:
        while (!atomic_load(&go)) {
            struct timespec ts = {5, 0};
            futex(&go, FUTEX_WAIT_PRIVATE, 0, &ts);
        }
        break;
    case 2:
        pthread_mutex_lock(&lock);
        while (!atomic_load(&go)) pthread_cond_wait(&cond, &lock);
        pthread_mutex_unlock(&lock);
        break;
    case 3:
        pthread_mutex_lock(&lock);
        while (!atomic_load(&go)) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 5;
            pthread_cond_timedwait(&cond, &lock, &ts);
        }
        pthread_mutex_unlock(&lock);
        break;
    case 4:
        while (!atomic_load(&go)) {
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        break;
    case 5:
        while (!atomic_load(&go)) atomic_fetch_add(&spins, 1);
        break;
    case 6:
        while (!atomic_load(&go)) poll(NULL, 0, 20);
        break;
    case 7: {
        char c;
        ssize_t n;
        while ((n = read(0, &c, 1)) < 0 && errno == EINTR) {
        }
        if (n != 1) exit(3);
        pthread_mutex_lock(&lock);
        atomic_store(&go, 1);
        pthread_cond_broadcast(&cond);
        pthread_mutex_unlock(&lock);
        futex(&go, FUTEX_WAKE_PRIVATE, N, NULL);
        uint64_t one = 1;
        if (write(efd, &one, sizeof one) != sizeof one) exit(3);
        break;
    }
    case 8:
        while (!atomic_load(&go)) {
            struct epoll_event ev;
            epoll_wait(ep, &ev, 1, i == 23 ? 5000 : -1);
        }
        break;
    }
}

static void *worker(void *arg) {
    int i = (int)(long)arg;
    char name[16];
    snprintf(name, sizeof name, "w%d", i);
    prctl(PR_SET_NAME, name);
    sigset_t mask = mask_of(i);
    pthread_sigmask(SIG_SETMASK, &mask, NULL);
    tls_value = 1000 + i * 7;
    snprintf(tls_buf, sizeof tls_buf, "tls of %d", i);
    tids[i] = (pid_t)syscall(SYS_gettid);
    tls_addr[i] = &tls_value;
    atomic_fetch_add(&started, 1);

    wait_for_go(i);

    pid_t tid = (pid_t)syscall(SYS_gettid);
    if (tid != tids[i]) fail(i, "tid", tid, tids[i]);
    if (gettid() != tids[i]) fail(i, "glibc's tid", gettid(), tids[i]);
    if (tls_value != 1000 + i * 7) fail(i, "TLS value", tls_value, 1000 + i * 7);
    if ((void *)&tls_value != tls_addr[i]) fail(i, "TLS address", (long)&tls_value, (long)tls_addr[i]);
    char want[64];
    snprintf(want, sizeof want, "tls of %d", i);
    if (strcmp(tls_buf, want) != 0) fail(i, "TLS buffer", 0, 1);
    char now[16] = {0};
    prctl(PR_GET_NAME, now);
    if (strcmp(now, name) != 0) fail(i, "name", 0, 1);
    if (i == 9) {
        if (madvise(freed, FREED, MADV_DONTNEED) != 0) fail(i, "madvise", errno, 0);
        for (long k = 0; k < FREED; k += 4096)
            if (freed[k] != 0 || freed[k + 4095] != 0) {
                fail(i, "byte after MADV_DONTNEED at offset", k, 0);
                break;
            }
    }
    sigset_t cur;
    pthread_sigmask(SIG_SETMASK, NULL, &cur);
    for (int s = 1; s < 65; s++) {
        if (s == SIGKILL || s == SIGSTOP || s == 32 || s == 33) continue;
        if (sigismember(&cur, s) != sigismember(&mask, s)) fail(i, "mask bit", s, sigismember(&mask, s));
    }
    return NULL;
}

int main(void) {
    pthread_t threads[N];
    freed = mmap(NULL, FREED, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (freed == MAP_FAILED) return 2;
    memset(freed, 0x5a, FREED);
    ep = epoll_create1(0);
    efd = eventfd(0, 0);
    struct epoll_event watch = {.events = EPOLLIN, .data.u64 = 7};
    if (ep < 0 || efd < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, efd, &watch) != 0) return 2;
    for (long i = 0; i < N; i++) {
        if (pthread_create(&threads[i], NULL, worker, (void *)i) != 0) return 2;
    }
    while (atomic_load(&started) < N) usleep(1000);
    /* Let every thread reach its blocking call. */
    usleep(100 * 1000);
    printf("ready %d %lx\n", getpid(), (unsigned long)freed);
    fflush(stdout);
    for (int i = 0; i < N; i++) pthread_join(threads[i], NULL);
    int f = atomic_load(&failures);
    printf("%s %d\n", f ? "fail" : "ok", N - f);
    fflush(stdout);
    return f ? 1 : 0;
}
