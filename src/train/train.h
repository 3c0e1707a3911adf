// train.h: hax-train's training loop (MODEL.md §8) with its record of a run:
// validation at the reference's steps, the best checkpoint, the test pass,
// result.json, metrics.csv, best.safetensors, and the resume checkpoint.
//
// A run folder (config_run_dir) holds:
//   result.json         status (running | complete | failed | preempted), the
//                       resolved config, the figures (README "Training")
//   metrics.csv         step,loss,gate_loss,train_acc,lr,valid_acc
//   best.safetensors    the best model's weights under the reference's names,
//                       plus eval.rand.layers.{i}.hash_matrix for LSH layers
//   checkpoint.safetensors  weights, AdamW moments, best weights, metrics so
//                       far and the loop's counters: enough to resume exactly
// Every file is written atomically (temporary file, fsync, rename) by rank 0.
//
// Steps are counted as the reference does: optimizer step s = 1..steps uses
// train batch s-1 (modulo an epoch); validation runs after the steps s with
// (s + 1) % valid_every == 0 (the reference's `(step+1) % 500`: 499, 999, ...).
#ifndef HAX_TRAIN_H
#define HAX_TRAIN_H

#include <stdint.h>

#include "src/config/config.h"
#include "src/io/dataset.h"
#include "mpi/dist.h"

typedef struct {
    const hax_config *cfg;
    const char *config_text;  // config_to_string(cfg): stored in result.json and the checkpoint
    const char *config_path;  // the YAML file (messages only)
    const hax_dist *dist;
    hax_dataset *ds;          // opened and checked against cfg->data.gen
    char run_dir[HAX_PATH_MAX + 256];
    int force;                // start over even where a checkpoint exists
    int64_t stop_after_step;  // test hook: raise SIGTERM at itself after this step (0: off)
    double slow_step;         // test hook: sleep this many seconds after each step (0: off)
    int64_t nan_at_step;      // test hook: a NaN gradient on rank 0 at this step (0: off)
    int use_cuda;             // 1: the CUDA backend (train_pick_device), weights and AdamW on the device
} train_opts;

// The backend for train.device: 0 for the CPU, 1 for CUDA (auto: CUDA when
// this build has it, a device is visible and the CUDA engine implements the
// model), -1 with the reason in why when device: cuda cannot be honoured.
int train_pick_device(const hax_config *cfg, char *why, int why_len);

// Installs the SIGTERM / SIGUSR1 handlers: they only set a flag that the loop
// checks at each step boundary (then: checkpoint, exit 3).
void train_install_signals(void);
// HAX_GIT_REVISION into buf (1) or unset (0); any other value than a commit
// (7 to 40 hex digits, optionally "-dirty") stops the program with one line.
// hax-train checks it before it writes anything; result.json's git_revision.
int train_env_git_revision(char *buf, size_t n);
// 1 once a stop signal arrived on this rank.
int train_stop_requested(void);

// Trains (or resumes) the run described by o on every rank. Returns the exit
// status: HAX_EXIT_OK, HAX_EXIT_ERROR (a message was printed, the last good
// checkpoint kept) or HAX_EXIT_PREEMPTED (checkpoint written).
int train_run(const train_opts *o);

// 1 when <run_dir>/result.json exists and says "status": "complete".
int train_result_complete(const char *run_dir);

// Removes the temporary files NAME.tmp.PID (hax_write_file_atomic's) that a
// killed hax-train left in dir: those whose process is gone here and which
// have not changed for a minute (a live writer renames them within seconds).
// Prints one line per file removed ("hax-train: removed ..."). Returns the
// number removed. To call at start-up, before the run writes anything.
int train_remove_stale_tmp(const char *dir);

// Checks that an opened dataset was made with the generator parameters the
// config expects. 0, or -1 with "DIR: field: config expects X, dataset has Y".
int train_check_dataset(const hax_dataset *ds, const hax_data_params *want, const char *dir, char *err,
                        int errlen);

// Collective error check: every rank passes whether it failed (and its
// message). When any rank failed, the lowest failing rank prints its line,
// all ranks finalize MPI and exit with `code`; otherwise returns.
void train_check_all(const hax_dist *d, int failed, const char *msg, int code);
// Its two halves, for a caller that acts between them: the lowest failed
// rank (collective; -1 when none failed), and the exit (that rank prints msg).
int train_failed_rank(const hax_dist *d, int failed);
void train_exit_failed(const hax_dist *d, int failed_rank, const char *msg, int code);

#endif
