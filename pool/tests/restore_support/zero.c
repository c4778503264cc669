/* Zero pages a copy writes after a uffd restore (restore_uffd_zero.rs).
 * An anonymous area of 256 pages, only its first and last pages written
 * before the snapshot: the rest are zero pages of the snapshot. Then, per
 * line on stdin, touches one part of it and answers with the page faults
 * (minor + major, getrusage) that took:
 *   r  reads  pages 128..160
 *   w  writes pages  64..96
 *   m  reads, then writes, pages 192..208
 * and "sum N" of what it read. Says "ready ADDRESS" (the area's) first. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#define PAGE 4096
#define PAGES 256

static long faults(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_minflt + u.ru_majflt;
}

int main(void) {
    volatile unsigned char *a = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED) return 2;
    madvise((void *)a, PAGES * PAGE, MADV_NOHUGEPAGE);
    a[0] = 1;
    a[(PAGES - 1) * PAGE] = 1;
    char line[64];
    char out[128];
    int len = snprintf(out, sizeof out, "ready %lx\n", (unsigned long)a);
    if (write(1, out, len) != len) return 3;
    for (;;) {
        ssize_t n = read(0, line, sizeof line);
        if (n <= 0) return 0;
        long sum = 0;
        long before = faults();
        if (line[0] == 'r') {
            for (int p = 128; p < 160; p++) sum += a[p * PAGE];
        } else if (line[0] == 'w') {
            for (int p = 64; p < 96; p++) a[p * PAGE] = 2;
        } else if (line[0] == 'm') {
            for (int p = 192; p < 208; p++) sum += a[p * PAGE];
            for (int p = 192; p < 208; p++) a[p * PAGE] = 3;
        } else {
            return 4;
        }
        long after = faults();
        len = snprintf(out, sizeof out, "faults %ld sum %ld\n", after - before, sum);
        if (write(1, out, len) != len) return 5;
    }
}
