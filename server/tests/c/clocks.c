/* Clocks read through the vDSO agree with the kernel's system calls in the
 * copy (the vDSO data pages were moved to where the copy expects them). */
#include "common.h"

static double vdso(clockid_t id) {
    struct timespec t;
    clock_gettime(id, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double sys(clockid_t id) {
    struct timespec t;
    syscall(SYS_clock_gettime, id, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(void) {
    double before = vdso(CLOCK_MONOTONIC);

    ready();

    clockid_t ids[] = {CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME, CLOCK_MONOTONIC_RAW};
    for (unsigned i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        double a = sys(ids[i]), b = vdso(ids[i]), c = sys(ids[i]);
        CHECK(a <= b && b <= c);
    }
    CHECK(vdso(CLOCK_MONOTONIC) >= before);
    struct timeval tv;
    CHECK(gettimeofday(&tv, NULL) == 0);
    time_t now = syscall(SYS_time, NULL);
    CHECK(tv.tv_sec >= now - 1 && tv.tv_sec <= now + 1);
    return ok();
}
