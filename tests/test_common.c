// test_common.c: the shared foundations: checksum, counter-based rng, atomic files.
#include <errno.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "src/core/checksum.h"
#include "src/core/common.h"
#include "src/core/rng.h"
#include "test.h"

static void test_crc32c_known_value(void) {
    const char *s = "123456789";
    CHECK(hax_crc32c(0, s, 9) == 0xE3069283u, "got %08x", hax_crc32c(0, s, 9));
    // continuing over two pieces equals one pass
    uint32_t a = hax_crc32c(hax_crc32c(0, s, 4), s + 4, 5);
    CHECK(a == 0xE3069283u, "split crc %08x", a);
}

static void test_philox_known_answer(void) {
    // Known-answer vectors of Random123 (kat_vectors, philox4x32_10).
    uint32_t key0[2] = {0, 0}, ctr0[4] = {0, 0, 0, 0}, out[4];
    philox4x32(key0, ctr0, out);
    CHECK(out[0] == 0x6627e8d5u && out[1] == 0xe169c58du && out[2] == 0xbc57ac4cu && out[3] == 0x9b00dbd8u,
          "zero vector gives %08x %08x %08x %08x", out[0], out[1], out[2], out[3]);
    uint32_t key1[2] = {0xffffffffu, 0xffffffffu}, ctr1[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
    philox4x32(key1, ctr1, out);
    CHECK(out[0] == 0x408f276du && out[1] == 0x41c83b0eu && out[2] == 0xa20bc7c6u && out[3] == 0x6d5451fdu,
          "ones vector gives %08x %08x %08x %08x", out[0], out[1], out[2], out[3]);
}

static void test_rng_streams_keyed(void) {
    hax_rng a, b, c;
    rng_init(&a, 7, RNG_LSH, 3, 1, 0);
    rng_init(&b, 7, RNG_LSH, 3, 1, 0);
    rng_init(&c, 7, RNG_LSH, 3, 2, 0);
    int same = 1, differ = 0;
    for (int i = 0; i < 100; i++) {
        uint32_t x = rng_u32(&a), y = rng_u32(&b), z = rng_u32(&c);
        same &= x == y;
        differ += x != z;
    }
    CHECK(same, "equal keys must give equal streams");
    CHECK(differ > 95, "different keys must differ (%d of 100)", differ);
}

static void test_rng_distributions(void) {
    hax_rng r;
    rng_init(&r, 1, RNG_INIT, 0, 0, 0);
    double s = 0, s2 = 0, u = 0;
    int n = 200000, counts[5] = {0};
    for (int i = 0; i < n; i++) {
        double x = rng_normal(&r);
        s += x;
        s2 += x * x;
        u += rng_uniform(&r);
        counts[rng_below(&r, 5)]++;
    }
    CHECK(fabs(s / n) < 0.01, "normal mean %g", s / n);
    CHECK(fabs(s2 / n - 1) < 0.02, "normal variance %g", s2 / n);
    CHECK(fabs(u / n - 0.5) < 0.005, "uniform mean %g", u / n);
    for (int k = 0; k < 5; k++) CHECK(abs(counts[k] - n / 5) < n / 50, "below(5) count[%d] = %d", k, counts[k]);
}

static void test_atomic_write(void) {
    char dir[] = "/tmp/hax_test_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char path[256];
    snprintf(path, sizeof path, "%s/a/b/file.txt", dir);
    char sub[256];
    snprintf(sub, sizeof sub, "%s/a/b", dir);
    CHECK(hax_mkdir_p(sub) == 0, "mkdir_p: %s", strerror(errno));
    CHECK(hax_write_file_atomic(path, "hello", 5) == 0, "write");
    size_t n = 0;
    char *back = hax_read_file(path, &n);
    CHECK(back && n == 5 && memcmp(back, "hello", 5) == 0, "read back");
    free(back);
    // an unwritable target leaves nothing behind
    char bad[256];
    snprintf(bad, sizeof bad, "%s/missing/x", dir);
    CHECK(hax_write_file_atomic(bad, "x", 1) != 0, "write into a missing folder must fail");
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "cleanup");
}

// The exit status of hax_env_choice(var, choices, 0) in a child, its one
// error line sent to /dev/null.
static int env_choice_status(const char *var, const char *choices) {
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) dup2(fd, 2);
        hax_env_choice(var, choices, 0);
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_env_choice(void) {
    const char *var = "HAX_TEST_ENV_CHOICE";
    unsetenv(var);
    CHECK(hax_env_choice(var, "new old", 2) == 2, "unset: the caller's value");
    setenv(var, "new", 1);
    CHECK(hax_env_choice(var, "new old", 2) == 0, "first word");
    setenv(var, "old", 1);
    CHECK(hax_env_choice(var, "new old", 2) == 1, "second word");
    setenv(var, "all", 1);
    CHECK(hax_env_choice(var, "old new all", 1) == 2, "third word");
    CHECK(hax_env_choice(var, "all", 0) == 0, "one word");
    CHECK(env_choice_status(var, "new old") == HAX_EXIT_ERROR, "a value not listed is an error");
    setenv(var, "ol", 1);
    CHECK(env_choice_status(var, "new old") == HAX_EXIT_ERROR, "a prefix of a word is an error");
    setenv(var, "old new", 1);
    CHECK(env_choice_status(var, "old new") == HAX_EXIT_ERROR, "the list itself is an error");
    setenv(var, "", 1);
    CHECK(env_choice_status(var, "old new") == HAX_EXIT_ERROR, "the empty value is an error");
    setenv(var, "1", 1);
    CHECK(env_choice_status(var, "0 1") == 0, "a listed value exits normally");
    unsetenv(var);
}

int main(void) {
    RUN(test_crc32c_known_value);
    RUN(test_philox_known_answer);
    RUN(test_rng_streams_keyed);
    RUN(test_rng_distributions);
    RUN(test_atomic_write);
    RUN(test_env_choice);
    return test_summary();
}
