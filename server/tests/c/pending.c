/* Pending signals (issue 19), blocked so they wait, each with its siginfo:
 * for the process (its shared queue) a real-time signal queued twice with
 * values 11 and 12 (SI_QUEUE) and SIGUSR2 from kill (SI_USER); for the
 * main thread SIGUSR1 with value 21 (pthread_sigqueue); for a second
 * thread SIGRTMIN+3 with value 31 and SIGRTMIN+4 from tgkill (SI_TKILL, or
 * SI_USER as this kernel reports it).
 * The copy checks that each arrives exactly once, in order, with its
 * si_code, si_value and sender pid (the copy's own pid, which it keeps):
 * SIGUSR1 through its handler once unblocked, the others with
 * sigtimedwait, which then finds nothing more. Prints "ok". */
#include "common.h"
#include <pthread.h>

static volatile sig_atomic_t usr1_count;
static volatile int usr1_value = -1, usr1_code = 1;
static volatile int go, worker_result = -1, worker_tid;

static void on_usr1(int sig, siginfo_t *info, void *ctx) {
    (void)sig;
    (void)ctx;
    usr1_count++;
    usr1_value = info->si_value.sival_int;
    usr1_code = info->si_code;
}

static const struct timespec zero = {0, 0};
/* What this kernel reports for tgkill (SI_TKILL, or SI_USER on Linux
 * 6.18), probed by the original before the capture. */
static int tkill_code = 1;

/* The next queued `sig`'s info, or -1 when none is pending. */
static int take(int sig, siginfo_t *info) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    return sigtimedwait(&set, info, &zero);
}

static int worker_check(void) {
    siginfo_t info;
    if (take(SIGRTMIN + 3, &info) != SIGRTMIN + 3) return 1;
    if (info.si_code != SI_QUEUE || info.si_value.sival_int != 31) return 2;
    if (info.si_pid != getpid()) return 3;
    if (take(SIGRTMIN + 4, &info) != SIGRTMIN + 4) return 4;
    if (info.si_code != tkill_code || info.si_pid != getpid()) return 5;
    if (take(SIGRTMIN + 3, &info) != -1 || errno != EAGAIN) return 6;
    if (take(SIGRTMIN + 4, &info) != -1 || errno != EAGAIN) return 7;
    /* Nothing of the process's queue came here. */
    sigset_t pending;
    sigpending(&pending);
    if (sigismember(&pending, SIGRTMIN + 3) || sigismember(&pending, SIGRTMIN + 4)) return 8;
    return 0;
}

static void *worker(void *arg) {
    (void)arg;
    worker_tid = (int)syscall(SYS_gettid);
    while (!go) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    worker_result = worker_check();
    return NULL;
}

int main(void) {
    struct sigaction sa = {0};
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigaddset(&block, SIGUSR2);
    sigaddset(&block, SIGRTMIN + 2);
    sigaddset(&block, SIGRTMIN + 3);
    sigaddset(&block, SIGRTMIN + 4);
    sigaddset(&block, SIGRTMIN + 5);
    CHECK(pthread_sigmask(SIG_BLOCK, &block, NULL) == 0);
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, worker, NULL) == 0);
    while (!worker_tid)
        sched_yield();

    siginfo_t probe;
    CHECK(syscall(SYS_tgkill, getpid(), (int)syscall(SYS_gettid), SIGRTMIN + 5) == 0);
    sigset_t rt5;
    sigemptyset(&rt5);
    sigaddset(&rt5, SIGRTMIN + 5);
    CHECK(sigwaitinfo(&rt5, &probe) == SIGRTMIN + 5);
    tkill_code = probe.si_code;

    union sigval v;
    v.sival_int = 11;
    CHECK(sigqueue(getpid(), SIGRTMIN + 2, v) == 0);
    v.sival_int = 12;
    CHECK(sigqueue(getpid(), SIGRTMIN + 2, v) == 0);
    CHECK(kill(getpid(), SIGUSR2) == 0);
    v.sival_int = 21;
    CHECK(pthread_sigqueue(pthread_self(), SIGUSR1, v) == 0);
    v.sival_int = 31;
    CHECK(pthread_sigqueue(thread, SIGRTMIN + 3, v) == 0);
    CHECK(syscall(SYS_tgkill, getpid(), worker_tid, SIGRTMIN + 4) == 0);

    ready();

    sigset_t pending;
    CHECK(sigpending(&pending) == 0);
    CHECK(sigismember(&pending, SIGUSR1) && sigismember(&pending, SIGUSR2));
    CHECK(sigismember(&pending, SIGRTMIN + 2));
    siginfo_t info;
    CHECK(take(SIGRTMIN + 2, &info) == SIGRTMIN + 2);
    CHECK(info.si_code == SI_QUEUE && info.si_value.sival_int == 11 && info.si_pid == getpid());
    CHECK(take(SIGRTMIN + 2, &info) == SIGRTMIN + 2);
    CHECK(info.si_code == SI_QUEUE && info.si_value.sival_int == 12);
    CHECK(take(SIGRTMIN + 2, &info) == -1 && errno == EAGAIN);
    CHECK(take(SIGUSR2, &info) == SIGUSR2);
    CHECK(info.si_code == SI_USER && info.si_pid == getpid());
    CHECK(take(SIGUSR2, &info) == -1 && errno == EAGAIN);

    /* SIGUSR1 through its handler, once. */
    CHECK(usr1_count == 0);
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    CHECK(pthread_sigmask(SIG_UNBLOCK, &usr1, NULL) == 0);
    CHECK(usr1_count == 1 && usr1_value == 21 && usr1_code == SI_QUEUE);
    CHECK(take(SIGUSR1, &info) == -1 && errno == EAGAIN);

    go = 1;
    CHECK(pthread_join(thread, NULL) == 0);
    if (worker_result != 0) {
        printf("FAIL: worker check %d\n", worker_result);
        return 1;
    }
    CHECK(usr1_count == 1);
    return ok();
}
