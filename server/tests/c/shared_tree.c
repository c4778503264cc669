/* Shared memory between the processes of a tree (issue 19): a parent maps
 * two pages MAP_SHARED | MAP_ANONYMOUS and writes page 0, attaches a System
 * V segment, writes its first byte and removes it (IPC_RMID: it lives while
 * attached), and forks a child that waits on a pipe (attached to both). Both are captured as one tree. On the
 * byte it reads after "ready" ('g' in a copy, 'o' in the original once the
 * copies ran) the parent checks that page 0 is as captured and page 1
 * empty (no copy's writes: neither an earlier copy's nor, in the original,
 * any copy's), writes the byte into page 1 and wakes the child, which
 * checks it sees that write and answers with one of its own, which the
 * parent then sees; the same through the System V segment. Prints "ok". */
#include "common.h"
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/wait.h>

#define PAGE 4096

int main(void) {
    (void)ready; /* this program reads its own byte after "ready" */
    char *p = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED);
    memset(p, 'P', PAGE);
    int id = shmget(IPC_PRIVATE, PAGE, 0600);
    CHECK(id >= 0);
    char *s = shmat(id, NULL, 0);
    CHECK(s != (void *)-1);
    s[0] = 's';
    CHECK(shmctl(id, IPC_RMID, NULL) == 0);
    int down[2], up[2];
    CHECK(pipe(down) == 0 && pipe(up) == 0);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        close(down[1]);
        close(up[0]);
        char c;
        if (read(down[0], &c, 1) != 1) _exit(3);
        if (p[0] != 'P' || p[PAGE - 1] != 'P') _exit(4);
        if (p[PAGE] != c) _exit(5);
        if (s[0] != 's' || s[1] != c) _exit(7);
        p[PAGE + 1] = 'c';
        s[2] = 'd';
        if (write(up[1], "k", 1) != 1) _exit(6);
        _exit(0);
    }
    close(down[0]);
    close(up[1]);

    char c;
    printf("ready\n");
    fflush(stdout);
    CHECK(read(0, &c, 1) == 1);

    for (int i = 0; i < PAGE; i++) {
        CHECK(p[i] == 'P');
        CHECK(p[PAGE + i] == 0);
    }
    CHECK(s[0] == 's' && s[1] == 0 && s[2] == 0);
    p[PAGE] = c;
    s[1] = c;
    CHECK(write(down[1], &c, 1) == 1);
    char k;
    CHECK(read(up[0], &k, 1) == 1 && k == 'k');
    CHECK(p[PAGE + 1] == 'c');
    CHECK(s[2] == 'd');
    int status;
    CHECK(waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    return ok();
}
