/* Shared by the C programs of cli_restore.rs: each sets up some state,
 * says "ready", waits for one byte on stdin (it is captured there with
 * `thaw snapshot --pid`, then restored with `thaw restore`), checks that the
 * state survived, and prints "ok" (exit 0) or what failed (exit 1). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define CHECK(c)                                                             \
    do {                                                                     \
        if (!(c)) {                                                          \
            printf("FAIL line %d: %s (errno %d)\n", __LINE__, #c, errno);    \
            fflush(stdout);                                                  \
            return 1;                                                        \
        }                                                                    \
    } while (0)

static void ready(void) {
    char c;
    printf("ready\n");
    fflush(stdout);
    if (read(0, &c, 1) != 1)
        _exit(3);
}

static int ok(void) {
    printf("ok\n");
    fflush(stdout);
    return 0;
}
