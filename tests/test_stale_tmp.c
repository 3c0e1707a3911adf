// test_stale_tmp.c: train_remove_stale_tmp removes the NAME.tmp.PID files of
// processes that are gone (and old), and keeps everything else.
#include <stdio.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "src/core/common.h"
#include "src/train/train.h"
#include "test.h"

static char dir[64];

// Creates dir/name, aged by age seconds.
static void make_file(const char *name, int age) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (f) fclose(f);
    struct timeval tv[2];
    gettimeofday(&tv[0], NULL);
    tv[0].tv_sec -= age;
    tv[1] = tv[0];
    utimes(path, tv);
}

static int present(const char *name) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

static void test_remove_stale(void) {
    snprintf(dir, sizeof dir, "/tmp/hax_stale_tmp.XXXXXX");
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char live[64];
    snprintf(live, sizeof live, "result.json.tmp.%ld", (long)getppid());  // a live process
    make_file("checkpoint.safetensors.tmp.999999", 3600);  // dead, old: removed
    make_file("metrics.csv.tmp.999998", 3600);             // dead, old: removed
    make_file("result.json.tmp.999997", 0);                // dead, but just written: kept
    make_file(live, 3600);                                 // alive: kept
    make_file("result.json", 3600);                        // not a temporary
    make_file("notes.tmp.12a", 3600);                      // not a PID
    CHECK(train_remove_stale_tmp(dir) == 2, "two removed");
    CHECK(!present("checkpoint.safetensors.tmp.999999") && !present("metrics.csv.tmp.999998"), "stale ones gone");
    CHECK(present("result.json.tmp.999997") && present(live) && present("result.json") && present("notes.tmp.12a"),
          "the rest kept");
    CHECK(train_remove_stale_tmp(dir) == 0, "nothing more");
    CHECK(train_remove_stale_tmp("/nonexistent/folder") == 0, "a missing folder");
    CHECK(test_remove_dir(dir), "cleanup");
}

int main(void) {
    RUN(test_remove_stale);
    return test_summary();
}
