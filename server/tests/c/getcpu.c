/* sched_getcpu (rseq, re-registered in the copy) follows the CPU the copy
 * is pinned to. */
#include "common.h"

int main(void) {
    cpu_set_t all;
    CHECK(sched_getaffinity(0, sizeof all, &all) == 0);

    ready();

    int tried = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &all))
            continue;
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        CHECK(sched_setaffinity(0, sizeof one, &one) == 0);
        CHECK(sched_getcpu() == cpu);
        unsigned got = 99;
        CHECK(syscall(SYS_getcpu, &got, NULL, NULL) == 0 && (int)got == cpu);
        tried++;
    }
    CHECK(tried > 0);
    return ok();
}
