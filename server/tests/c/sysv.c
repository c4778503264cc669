/* System V shared memory (issue 19): a private segment of 3 pages + 100
 * bytes with pages 0 and 2 written and page 1 made read-only (one
 * attachment in three areas); a keyed segment attached twice, once
 * read-only; a segment removed (IPC_RMID) while attached. On the byte it
 * reads after "ready" ('g' in a copy, 'o' in the original once the copies
 * ran) the program checks the content as captured and that no copy's
 * write is there (neither an earlier copy's nor, in the original, any
 * copy's), the segments' sizes, modes, owner and ids (the key finds the
 * same id; the removed one is still marked removed), that the segments
 * are writable where they were and shared between the two attachments
 * and with a child it forks; then removes them. Prints "ok". */
#include "common.h"
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/wait.h>

#define PAGE 4096

int main(void) {
    (void)ready; /* this program reads its own byte after "ready" */
    int priv = shmget(IPC_PRIVATE, 3 * PAGE + 100, 0600);
    CHECK(priv >= 0);
    char *p = shmat(priv, NULL, 0);
    CHECK(p != (void *)-1);
    memset(p, 'S', PAGE);
    memset(p + 2 * PAGE, 'T', PAGE);
    CHECK(mprotect(p + PAGE, PAGE, PROT_READ) == 0);

    key_t key = 0x74680000 | (getpid() & 0xffff);
    int keyed = shmget(key, PAGE, IPC_CREAT | IPC_EXCL | 0640);
    CHECK(keyed >= 0);
    char *q = shmat(keyed, NULL, 0);
    CHECK(q != (void *)-1);
    memset(q, 'K', PAGE);
    char *r = shmat(keyed, NULL, SHM_RDONLY);
    CHECK(r != (void *)-1);

    int gone = shmget(IPC_PRIVATE, PAGE, 0600);
    CHECK(gone >= 0);
    char *d = shmat(gone, NULL, 0);
    CHECK(d != (void *)-1);
    memset(d, 'D', 64);
    CHECK(shmctl(gone, IPC_RMID, NULL) == 0);

    char c;
    printf("ready\n");
    fflush(stdout);
    CHECK(read(0, &c, 1) == 1);

    for (int i = 0; i < PAGE; i++) {
        CHECK(p[i] == 'S');
        CHECK(p[PAGE + i] == 0);
        CHECK(p[2 * PAGE + i] == 'T');
        CHECK(q[i] == 'K' && r[i] == 'K');
    }
    for (int i = 0; i < 100; i++) CHECK(p[3 * PAGE + i] == 0);
    CHECK(d[0] == 'D' && d[63] == 'D' && d[64] == 0);

    struct shmid_ds ds;
    CHECK(shmctl(priv, IPC_STAT, &ds) == 0);
    CHECK(ds.shm_segsz == 3 * PAGE + 100);
    CHECK((ds.shm_perm.mode & 0777) == 0600);
    CHECK(ds.shm_perm.uid == getuid() && ds.shm_perm.gid == getgid());
    CHECK(ds.shm_nattch == 3); /* one attachment in three areas */
    CHECK(shmget(key, 0, 0) == keyed);
    CHECK(shmctl(keyed, IPC_STAT, &ds) == 0);
    CHECK((ds.shm_perm.mode & 0777) == 0640 && ds.shm_nattch == 2);
    CHECK(shmctl(gone, IPC_STAT, &ds) == 0);
    CHECK(ds.shm_perm.mode & SHM_DEST);

    /* Writable where it was; the two attachments of one segment share. */
    p[3 * PAGE + 5] = c;
    p[2 * PAGE + 7] = c;
    q[1] = c;
    CHECK(r[1] == c);
    d[100] = c;
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        if (p[3 * PAGE + 5] != c || r[1] != c) _exit(2);
        p[3 * PAGE + 6] = 'k';
        d[101] = 'k';
        _exit(0);
    }
    int status;
    CHECK(waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(p[3 * PAGE + 6] == 'k' && d[101] == 'k');

    CHECK(shmctl(priv, IPC_RMID, NULL) == 0);
    CHECK(shmctl(keyed, IPC_RMID, NULL) == 0);
    return ok();
}
