/* The umask applies to files the copy creates (argv[1] a directory). */
#include "common.h"

int main(int argc, char **argv) {
    CHECK(argc == 2);
    umask(027);

    ready();

    char path[4096];
    snprintf(path, sizeof path, "%s/made-%d", argv[1], (int)getpid());
    int fd = open(path, O_CREAT | O_WRONLY | O_EXCL, 0666);
    CHECK(fd >= 0);
    struct stat st;
    CHECK(fstat(fd, &st) == 0);
    unlink(path);
    CHECK((st.st_mode & 0777) == 0640);
    mode_t old = umask(0);
    CHECK(old == 027);
    return ok();
}
