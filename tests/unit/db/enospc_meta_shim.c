/* Fault injection for tests/unit/db/test_store_full.py, loaded with LD_PRELOAD: while the file named by
 * $ENOSPC_META_FLAG exists, pwrite() into the first 8 KiB of any file (LMDB's two meta pages) fails with
 * ENOSPC, as it can on a copy-on-write filesystem that is full. Every other write goes through. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

static int meta_write_refused(off_t offset) {
    const char *flag = getenv("ENOSPC_META_FLAG");
    return offset < 8192 && flag != NULL && access(flag, F_OK) == 0;
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
    if (real_pwrite == NULL)
        real_pwrite = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
    if (meta_write_refused(offset)) {
        errno = ENOSPC;
        return -1;
    }
    return real_pwrite(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    return pwrite(fd, buf, count, offset);
}
