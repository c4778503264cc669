/* Anonymous shared memory (issue 19): four pages MAP_SHARED | MAP_ANONYMOUS
 * with pages 0 and 2 written (1 and 3 never touched), and a written page
 * made read-only. The copy checks the content as captured (so no earlier
 * copy's writes: copies do not share it), that the mappings are still
 * shared ("s" in /proc/self/maps), then marks it, forks a child that
 * writes page 3 and sees the mark, and sees the child's write: shared
 * between the copy's own processes. Prints "ok". */
#include "common.h"
#include <sys/wait.h>

#define PAGE 4096

static int shared_in_maps(void *at) {
    char line[512], want[32];
    snprintf(want, sizeof want, "%lx-", (unsigned long)at);
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return 0;
    int found = 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, want, strlen(want)) == 0) {
            char perms[8];
            found = sscanf(line, "%*s %7s", perms) == 1 && perms[3] == 's';
        }
    fclose(f);
    return found;
}

int main(void) {
    char *p = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED);
    memset(p, 'A', PAGE);
    memset(p + 2 * PAGE, 'C', PAGE);
    char *ro = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(ro != MAP_FAILED);
    memset(ro, 'R', PAGE);
    CHECK(mprotect(ro, PAGE, PROT_READ) == 0);

    ready();

    for (int i = 0; i < PAGE; i++) {
        CHECK(p[i] == 'A');
        CHECK(p[PAGE + i] == 0);
        CHECK(p[2 * PAGE + i] == 'C');
        CHECK(p[3 * PAGE + i] == 0);
        CHECK(ro[i] == 'R');
    }
    CHECK(shared_in_maps(p) && shared_in_maps(ro));
    p[100] = 'X';
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        if (p[100] != 'X') _exit(2);
        memset(p + 3 * PAGE, 'K', PAGE);
        _exit(0);
    }
    int status;
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(p[3 * PAGE] == 'K' && p[4 * PAGE - 1] == 'K');
    return ok();
}
