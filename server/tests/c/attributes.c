/* Small process attributes (issue 19): oom_score_adj, the child
 * subreaper flag, a membarrier registration (private expedited), the
 * parent-death signal of each of two threads, the personality, and
 * no_new_privs. The copy (`thaw restore`: the snapshot's own credentials)
 * reads each back; the membarrier registration is also used (unregistered,
 * MEMBARRIER_CMD_PRIVATE_EXPEDITED fails with EPERM). Prints "ok". */
#include "common.h"
#include <linux/membarrier.h>
#include <pthread.h>
#include <sys/personality.h>
#include <sys/prctl.h>

#define PERSONALITY (ADDR_NO_RANDOMIZE | STICKY_TIMEOUTS)
#ifndef MEMBARRIER_CMD_GET_REGISTRATIONS
#define MEMBARRIER_CMD_GET_REGISTRATIONS (1 << 9)
#endif

static volatile int go, worker_ready, worker_result = -1;

static int membarrier(int cmd) { return (int)syscall(SYS_membarrier, cmd, 0, 0); }

static int read_oom(void) {
    FILE *f = fopen("/proc/self/oom_score_adj", "r");
    int v = -9999;
    if (!f) return v;
    if (fscanf(f, "%d", &v) != 1) v = -9999;
    fclose(f);
    return v;
}

static void *worker(void *arg) {
    (void)arg;
    if (prctl(PR_SET_PDEATHSIG, SIGHUP) != 0) return NULL;
    worker_ready = 1;
    while (!go) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    int sig = -1;
    worker_result = prctl(PR_GET_PDEATHSIG, &sig) == 0 && sig == SIGHUP ? 0 : sig;
    return NULL;
}

int main(void) {
    FILE *f = fopen("/proc/self/oom_score_adj", "w");
    CHECK(f && fprintf(f, "345\n") > 0 && fclose(f) == 0);
    CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
    CHECK(membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == -1 && errno == EPERM);
    CHECK(membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0);
    CHECK(prctl(PR_SET_PDEATHSIG, SIGUSR2) == 0);
    CHECK(personality(PERSONALITY) != -1);
    CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0);
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, worker, NULL) == 0);
    while (!worker_ready)
        sched_yield();

    ready();

    CHECK(read_oom() == 345);
    int flag = -1;
    CHECK(prctl(PR_GET_CHILD_SUBREAPER, &flag) == 0 && flag == 1);
    int registered = membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS);
    CHECK(registered >= 0 && (registered & MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED));
    CHECK(membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0);
    int sig = -1;
    CHECK(prctl(PR_GET_PDEATHSIG, &sig) == 0 && sig == SIGUSR2);
    CHECK(personality(0xffffffff) == PERSONALITY);
    CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1);
    go = 1;
    CHECK(pthread_join(thread, NULL) == 0);
    if (worker_result != 0) {
        printf("FAIL: the worker's parent-death signal is %d\n", worker_result);
        return 1;
    }
    return ok();
}
