/* Open files keep their offsets and flags: a read position, an append-only
 * file, a directory fd (argv[1] data file, argv[2] log file, argv[3] dir). */
#include "common.h"

int main(int argc, char **argv) {
    CHECK(argc == 4);
    int data = open(argv[1], O_RDONLY);
    CHECK(data >= 0);
    char head[10];
    CHECK(read(data, head, 10) == 10);
    int log = open(argv[2], O_WRONLY | O_APPEND);
    CHECK(log >= 0);
    CHECK(write(log, "one\n", 4) == 4);
    int dir = open(argv[3], O_RDONLY | O_DIRECTORY);
    CHECK(dir >= 0);

    ready();

    CHECK(lseek(data, 0, SEEK_CUR) == 10);
    char next[10] = {0};
    CHECK(read(data, next, 10) == 10 && memcmp(next, "0123456789", 10) == 0);
    CHECK(fcntl(log, F_GETFL) & O_APPEND);
    CHECK(write(log, "two\n", 4) == 4);
    struct stat st;
    CHECK(fstat(log, &st) == 0 && st.st_size == 8);
    int f = openat(dir, "inside", O_RDONLY);
    CHECK(f >= 0);
    return ok();
}
