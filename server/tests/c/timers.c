/* Timers (issue 19): an interval timer on each clock (ITIMER_REAL,
 * ITIMER_PROF), and POSIX timers with every notification: a signal to a
 * thread (SIGEV_THREAD_ID, on CLOCK_MONOTONIC), a signal to the process
 * (SIGEV_SIGNAL, on the process CPU clock), none (SIGEV_NONE), and glibc's
 * SIGEV_THREAD (a callback in glibc's helper thread). The
 * realtime ones first expire 1 s after they are armed (after the capture);
 * the CPU ones once the copy has used CPU. The copy checks that every
 * timer has its id, clock and interval, that each fires (N >= 1 ticks;
 * the first wait is bounded only so a broken copy ends), that the thread
 * timer's signal reaches its thread with its sigev_value and SI_TIMER,
 * and that a new timer_create gets a fresh id. Prints "ok". */
#include "common.h"
#include <pthread.h>

static volatile sig_atomic_t alarms, profs, thread_ticks, cpu_ticks;
static volatile int thread_value = -1, thread_code = 1, thread_tid = -1;
static volatile int cpu_value = -1;
static volatile int worker_tid;
static volatile sig_atomic_t callbacks;
static volatile int callback_value = -1;

/* glibc's SIGEV_THREAD: run in its helper thread (a SIGEV_THREAD_ID timer
 * aimed at that thread, which the copy has too). */
static void on_callback(union sigval v) {
    callback_value = v.sival_int;
    callbacks++;
}

static void on_alarm(int sig) { (void)sig; alarms++; }
static void on_prof(int sig) { (void)sig; profs++; }

static void on_usr1(int sig, siginfo_t *info, void *ctx) {
    (void)sig;
    (void)ctx;
    thread_value = info->si_value.sival_int;
    thread_code = info->si_code;
    thread_tid = (int)syscall(SYS_gettid);
    thread_ticks++;
}

static void on_usr2(int sig, siginfo_t *info, void *ctx) {
    (void)sig;
    (void)ctx;
    cpu_value = info->si_value.sival_int;
    cpu_ticks++;
}

static void *worker(void *arg) {
    (void)arg;
    worker_tid = (int)syscall(SYS_gettid);
    for (;;)
        pause();
    return NULL;
}

static int handle(int sig, void (*fn)(int), void (*act)(int, siginfo_t *, void *)) {
    struct sigaction sa = {0};
    if (act) {
        sa.sa_sigaction = act;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
    } else {
        sa.sa_handler = fn;
        sa.sa_flags = SA_RESTART;
    }
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, NULL);
}

static long ms(const struct timespec *t) { return t->tv_sec * 1000 + t->tv_nsec / 1000000; }

int main(void) {
    CHECK(handle(SIGALRM, on_alarm, NULL) == 0);
    CHECK(handle(SIGPROF, on_prof, NULL) == 0);
    CHECK(handle(SIGUSR1, NULL, on_usr1) == 0);
    CHECK(handle(SIGUSR2, NULL, on_usr2) == 0);
    /* Only the worker takes SIGUSR1 (it is aimed at it anyway). */
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, worker, NULL) == 0);
    CHECK(pthread_sigmask(SIG_BLOCK, &usr1, NULL) == 0);
    while (!worker_tid)
        sched_yield();

    struct itimerval real = {.it_interval = {0, 100000}, .it_value = {1, 0}};
    CHECK(setitimer(ITIMER_REAL, &real, NULL) == 0);
    struct itimerval prof = {.it_interval = {0, 20000}, .it_value = {0, 20000}};
    CHECK(setitimer(ITIMER_PROF, &prof, NULL) == 0);

    /* A few timers created and deleted first, so the ids kept are not
     * simply 0, 1, 2. */
    timer_t scratch[3];
    struct sigevent none = {.sigev_notify = SIGEV_NONE};
    for (int i = 0; i < 3; i++)
        CHECK(timer_create(CLOCK_MONOTONIC, &none, &scratch[i]) == 0);
    CHECK(timer_delete(scratch[0]) == 0 && timer_delete(scratch[2]) == 0);

    timer_t to_thread, to_process, silent;
    struct sigevent ev = {0};
    ev.sigev_notify = SIGEV_THREAD_ID;
    ev.sigev_signo = SIGUSR1;
    ev.sigev_value.sival_int = 42;
    ev._sigev_un._tid = worker_tid;
    CHECK(timer_create(CLOCK_MONOTONIC, &ev, &to_thread) == 0);
    struct itimerspec every100 = {.it_interval = {0, 100000000}, .it_value = {1, 0}};
    CHECK(timer_settime(to_thread, 0, &every100, NULL) == 0);
    struct sigevent evp = {0};
    evp.sigev_notify = SIGEV_SIGNAL;
    evp.sigev_signo = SIGUSR2;
    evp.sigev_value.sival_int = 7;
    CHECK(timer_create(CLOCK_PROCESS_CPUTIME_ID, &evp, &to_process) == 0);
    struct itimerspec cpu20 = {.it_interval = {0, 20000000}, .it_value = {0, 20000000}};
    CHECK(timer_settime(to_process, 0, &cpu20, NULL) == 0);
    timer_t in_thread;
    struct sigevent evt = {0};
    evt.sigev_notify = SIGEV_THREAD;
    evt.sigev_notify_function = on_callback;
    evt.sigev_value.sival_int = 5;
    CHECK(timer_create(CLOCK_MONOTONIC, &evt, &in_thread) == 0);
    CHECK(timer_settime(in_thread, 0, &every100, NULL) == 0);
    CHECK(timer_create(CLOCK_REALTIME, &none, &silent) == 0);
    struct itimerspec far = {.it_interval = {5, 0}, .it_value = {1000, 0}};
    CHECK(timer_settime(silent, 0, &far, NULL) == 0);

    ready();

    /* Every timer is back with its interval. */
    struct itimerval now_real, now_prof;
    CHECK(getitimer(ITIMER_REAL, &now_real) == 0);
    CHECK(now_real.it_interval.tv_sec == 0 && now_real.it_interval.tv_usec == 100000);
    CHECK(getitimer(ITIMER_PROF, &now_prof) == 0);
    CHECK(now_prof.it_interval.tv_sec == 0 && now_prof.it_interval.tv_usec == 20000);
    struct itimerspec t;
    CHECK(timer_gettime(to_thread, &t) == 0);
    CHECK(t.it_interval.tv_sec == 0 && t.it_interval.tv_nsec == 100000000);
    CHECK(timer_gettime(to_process, &t) == 0);
    CHECK(t.it_interval.tv_sec == 0 && t.it_interval.tv_nsec == 20000000);
    CHECK(timer_gettime(silent, &t) == 0);
    CHECK(t.it_interval.tv_sec == 5 && t.it_interval.tv_nsec == 0);
    CHECK(ms(&t.it_value) > 900 * 1000 && ms(&t.it_value) <= 1000 * 1000);
    /* The deleted ones stay deleted, the kept one is kept. */
    CHECK(timer_gettime(scratch[0], &t) == -1 && errno == EINVAL);
    CHECK(timer_gettime(scratch[1], &t) == 0);

    /* Each fires: the CPU timers while this thread works, the realtime
     * ones a second after the resume. */
    struct timespec start, at;
    clock_gettime(CLOCK_MONOTONIC, &start);
    volatile unsigned long spin = 0;
    for (;;) {
        for (int i = 0; i < 1000000; i++)
            spin++;
        if (alarms >= 2 && profs >= 2 && thread_ticks >= 2 && cpu_ticks >= 2 && callbacks >= 2)
            break;
        clock_gettime(CLOCK_MONOTONIC, &at);
        if (ms(&at) - ms(&start) > 20000) {
            printf("FAIL: ticks alarm %d prof %d thread %d cpu %d callbacks %d\n", (int)alarms,
                   (int)profs, (int)thread_ticks, (int)cpu_ticks, (int)callbacks);
            return 1;
        }
    }
    CHECK(thread_value == 42 && thread_code == SI_TIMER && thread_tid == worker_tid);
    CHECK(cpu_value == 7);
    CHECK(callback_value == 5);

    /* The program's own timer_create gets ids as usual again. */
    timer_t fresh;
    CHECK(timer_create(CLOCK_MONOTONIC, &none, &fresh) == 0);
    CHECK(fresh != to_thread && fresh != to_process && fresh != silent && fresh != scratch[1] &&
          fresh != in_thread);
    return ok();
}
