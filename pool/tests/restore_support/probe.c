/* A process with state of every kind a restore must bring back. It sets
 * everything up, writes "ready <pid>\n" on stdout and blocks reading one
 * byte from stdin (the snapshot point). After that byte it checks that
 * everything is as it was (and that its shared mapping shows what the
 * file holds now), prints "ok" and
 * exits 0, or prints what differs on stderr and exits with a code naming
 * the check.
 *
 * usage: probe SHARED_FILE PRIVATE_FILE DATA_FILE WORKDIR */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024 * 1024)
static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

static int fail(int code, const char *what) {
    fprintf(stderr, "probe: check %d failed: %s (errno %d)\n", code, what, errno);
    exit(code);
}

static unsigned char pattern(size_t i, unsigned seed) { return (unsigned char)(i * 7 + seed + (i >> 12)); }

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    pid_t mypid = getpid();
    char exe_before[4096] = {0};
    if (readlink("/proc/self/exe", exe_before, sizeof exe_before - 1) < 0) fail(3, "readlink before");

    /* heap (brk) and a large anonymous area with zero and untouched pages */
    unsigned char *heap = malloc(256 * 1024);
    for (size_t i = 0; i < 256 * 1024; i++) heap[i] = pattern(i, 1);
    unsigned char *anon = mmap(NULL, 8 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (anon == MAP_FAILED) fail(4, "mmap anon");
    for (size_t i = 0; i < 4 * MIB; i++) anon[i] = pattern(i, 2);
    memset(anon + 4 * MIB, 0, MIB); /* touched, zero */
    /* read-only anonymous area with content */
    unsigned char *ro = mmap(NULL, 64 * 1024, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < 64 * 1024; i++) ro[i] = pattern(i, 3);
    mprotect(ro, 64 * 1024, PROT_READ);

    /* private file mapping, one page written (copy on write) */
    int pf = open(argv[2], O_RDONLY);
    if (pf < 0) fail(5, "open private file");
    unsigned char *priv = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, pf, 0);
    if (priv == MAP_FAILED) fail(6, "mmap private file");
    close(pf);
    memcpy(priv + 4096, "private-cow-page", 16);

    /* shared file mapping */
    int sf = open(argv[1], O_RDWR);
    if (sf < 0) fail(7, "open shared file");
    if (pwrite(sf, "before", 6, 0) != 6) fail(7, "write shared file");
    char *shared = mmap(NULL, 4096, PROT_READ, MAP_SHARED, sf, 0);
    if (shared == MAP_FAILED) fail(8, "mmap shared file");
    close(sf);
    if (memcmp(shared, "before", 6) != 0) fail(8, "shared mapping content");

    /* signals */
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    sigprocmask(SIG_BLOCK, &block, NULL);

    /* process attributes */
    if (chdir(argv[4]) != 0) fail(9, "chdir");
    umask(027);
    struct rlimit rl = {300, 4000};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) fail(10, "setrlimit");

    /* a regular file at an offset, on fd 7 */
    int df = open(argv[3], O_RDONLY);
    if (df < 0) fail(11, "open data");
    if (dup2(df, 7) != 7) fail(11, "dup2 data");
    close(df);
    char head[10];
    if (read(7, head, 10) != 10) fail(12, "read data head");

    /* clocks through the vDSO, the cpu through rseq */
    struct timespec mono_before, real_before;
    clock_gettime(CLOCK_MONOTONIC, &mono_before);
    clock_gettime(CLOCK_REALTIME, &real_before);
    if (sched_getcpu() < 0) fail(13, "sched_getcpu before");

    /* stack contents */
    volatile unsigned char stack_buf[64 * 1024];
    for (size_t i = 0; i < sizeof stack_buf; i++) stack_buf[i] = pattern(i, 4);

    char line[64];
    int n = snprintf(line, sizeof line, "ready %d\n", (int)mypid);
    if (write(1, line, n) != n) fail(14, "write ready");
    char byte;
    ssize_t r = read(0, &byte, 1); /* the snapshot point */
    if (r != 1) fail(15, "read the go byte");

    /* ---- from here on, possibly a copy ---- */
    if (getpid() != mypid) fail(20, "getpid");
    char exe_after[4096] = {0};
    if (readlink("/proc/self/exe", exe_after, sizeof exe_after - 1) < 0) fail(21, "readlink after");
    if (strcmp(exe_before, exe_after) != 0) fail(21, "exe differs");
    for (size_t i = 0; i < 256 * 1024; i++) if (heap[i] != pattern(i, 1)) fail(22, "heap");
    for (size_t i = 0; i < 4 * MIB; i++) if (anon[i] != pattern(i, 2)) fail(23, "anon");
    for (size_t i = 4 * MIB; i < 8 * MIB; i++) if (anon[i] != 0) fail(24, "anon zero");
    for (size_t i = 0; i < 64 * 1024; i++) if (ro[i] != pattern(i, 3)) fail(25, "read-only anon");
    for (size_t i = 0; i < sizeof stack_buf; i++) if (stack_buf[i] != pattern(i, 4)) fail(26, "stack");
    if (memcmp(priv + 4096, "private-cow-page", 16) != 0) fail(27, "private cow page");
    if (priv[0] != 'P' || priv[2 * 4096] != 'P') fail(28, "private file pages");
    /* whoever unblocked us wrote "after!" into the file first */
    if (memcmp(shared, "after!", 6) != 0) fail(29, "shared mapping sees the file");
    raise(SIGUSR1);
    if (!got_usr1) fail(30, "signal handler");
    sigset_t now;
    sigprocmask(SIG_BLOCK, NULL, &now);
    if (!sigismember(&now, SIGUSR2) || sigismember(&now, SIGUSR1)) fail(31, "signal mask");
    struct sigaction old;
    sigaction(SIGPIPE, NULL, &old);
    if (old.sa_handler != SIG_IGN) fail(32, "SIGPIPE ignored");
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd) || strcmp(cwd, argv[4]) != 0) fail(33, "cwd");
    if (umask(0) != 027) fail(34, "umask");
    struct rlimit rl2;
    getrlimit(RLIMIT_NOFILE, &rl2);
    if (rl2.rlim_cur != 300 || rl2.rlim_max != 4000) fail(35, "rlimit");
    char next[10];
    if (read(7, next, 10) != 10 || memcmp(next, "0123456789", 10) != 0) fail(36, "file offset");
    struct timespec mono_after, real_after;
    if (clock_gettime(CLOCK_MONOTONIC, &mono_after) != 0) fail(37, "clock_gettime");
    clock_gettime(CLOCK_REALTIME, &real_after);
    if (real_after.tv_sec < real_before.tv_sec) fail(38, "realtime went back");
    int cpu = sched_getcpu();
    if (cpu < 0 || cpu >= sysconf(_SC_NPROCESSORS_CONF)) fail(39, "sched_getcpu after");
    /* the heap still grows, memory still maps */
    void *big = malloc(32 * MIB);
    if (!big) fail(40, "malloc");
    memset(big, 1, 32 * MIB);
    free(big);
    char *more = malloc(100);
    if (!more) fail(41, "small malloc");
    free(more);
    if (write(1, "ok\n", 3) != 3) fail(42, "write ok");
    return 0;
}
