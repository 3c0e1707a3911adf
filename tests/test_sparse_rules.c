// test_sparse_rules.c: the sparse attention branch's discrete rules on the
// small ragged case of sparse_case.h: the LSH cap, sink and dilation lists,
// empty rows, packed == one-at-a-time, 1 thread == 2 threads, an empty batch,
// the refusals (each run as a child process), and a printed (not asserted)
// scaling check of HAX at n = 1,024 and 8,192. The mirror of the reference
// is in test_sparse.c.
#include "sparse_case.h"

// ---------------------------------------------------------------- pattern arithmetic

// Allowed list of packed row g as a string-free check against keys[0..n).
static int list_is(const hax_sparse_state *st, int g, const int *keys, int n) {
    int off = st->allow_off[g];
    if (st->allow_off[g + 1] - off != n) return 0;
    for (int i = 0; i < n; i++)
        if (st->allow_key[off + i] != keys[i]) return 0;
    return 1;
}

static void test_lsh_cap(void) {
    tcase c;
    make_case(&c, "sign_bin_lsh", SEMANTICS_REFERENCE, 404, LENS, NSEQ);
    int32_t *qb = xmalloc(sizeof(int32_t) * c.n_tok), *kb = xmalloc(sizeof(int32_t) * c.n_tok);
    hax_sparse_state *st = sparse_state_alloc(&c.cfg, c.n_tok, NSEQ, L_PAD);
    float *attn = xmalloc(sizeof(float) * c.n_tok * EE);
    for (int mode = 0; mode < 2; mode++) {
        // mode 0: one bucket for all (the k_c most recent = a sliding window);
        // mode 1: bucket = position parity for keys and queries
        for (int s = 0; s < NSEQ; s++)
            for (int t = 0; t < LENS[s]; t++) qb[c.seq_off[s] + t] = kb[c.seq_off[s] + t] = mode ? t % 2 : 5;
        sparse_force_buckets(st, qb, kb);
        sparse_forward(st, &c.cfg, &c.b, c.X, LDX, c.W, NULL, c.Hm, NULL, 0, attn, EE);
        int bad = 0;
        for (int s = 0; s < NSEQ; s++)
            for (int t = 0; t < LENS[s]; t++) {
                int keys[L_PAD], n = 0;
                for (int j = 0; j <= t; j++)
                    if (!mode || j % 2 == t % 2) keys[n++] = j;
                int drop = n > KEYS ? n - KEYS : 0;
                bad += !list_is(st, c.seq_off[s] + t, keys + drop, n - drop);
                bad += st->q_bucket[c.seq_off[s] + t] != qb[c.seq_off[s] + t];
            }
        CHECK(bad == 0, "mode %d: %d rows differ from the k_c most recent same-bucket keys", mode, bad);
    }
    // forced buckets off again: computed buckets come back
    sparse_force_buckets(st, NULL, NULL);
    sparse_forward(st, &c.cfg, &c.b, c.X, LDX, c.W, NULL, c.Hm, NULL, 0, attn, EE);
    int same = 1;
    for (int g = 0; g < c.n_tok; g++) same &= st->q_bucket[g] == qb[g];
    CHECK(!same, "buckets still forced after sparse_force_buckets(NULL, NULL)");
    free(qb), free(kb), free(attn);
    sparse_state_free(st);
    free_case(&c);
}

static void check_fixed_pattern(const char *pattern, int kind) {
    tcase c;
    make_case(&c, pattern, SEMANTICS_REFERENCE, 505, LENS, NSEQ);
    hax_sparse_state *st = sparse_state_alloc(&c.cfg, c.n_tok, NSEQ, L_PAD);
    float *attn = xmalloc(sizeof(float) * c.n_tok * EE);
    sparse_forward(st, &c.cfg, &c.b, c.X, LDX, c.W, NULL, NULL, NULL, 0, attn, EE);
    int k = c.cfg.k_c, delta = DML / k, bad = 0;
    for (int s = 0; s < NSEQ; s++)
        for (int t = 0; t < LENS[s]; t++) {
            int keys[L_PAD], n = 0;
            for (int j = 0; j <= t; j++) {
                int a = kind == 0 ? j < k                                      // sink
                      : kind == 1 ? j % delta == delta - 1                     // dilated
                                  : (j % delta == delta - 1 || t - j < k);     // sliding+dilated
                if (a) keys[n++] = j;
            }
            bad += !list_is(st, c.seq_off[s] + t, keys, n);
        }
    CHECK(bad == 0, "%s (k_c %d, delta %d): %d rows wrong", pattern, k, delta, bad);
    free(attn);
    sparse_state_free(st);
    free_case(&c);
}

static void test_sink_dilation(void) {
    check_fixed_pattern("sink", 0);
    check_fixed_pattern("dilated", 1);                 // delta = 40 / 8 = 5: keys 4, 9, 14, 19
    check_fixed_pattern("sliding_window+dilated", 2);  // k_c 4, delta 10: keys 9, 19 + window
}

// Empty rows: the reference averages all real V over L; causal gives 0.
static void test_empty_rows(void) {
    for (int sem = 0; sem < 2; sem++) {
        tcase c;
        make_case(&c, "dilated", (hax_semantics)sem, 606, LENS, NSEQ);
        tresult r;
        hax_sparse_state *st = run_impl(&c, &r, 0, 0);
        int s = 2, o = c.seq_off[s];  // length 20, rows 0..3 empty
        double worst = 0;
        for (int e = 0; e < EE; e++) {
            double mean = 0;
            for (int j = 0; j < LENS[s]; j++) mean += c.X[(o + j) * LDX + e];
            mean = sem == SEMANTICS_REFERENCE ? mean / L_PAD : 0.0;
            for (int t = 0; t < 4; t++) worst = fmax(worst, fabs(r.attn[(o + t) * EE + e] - mean));
        }
        CHECK(worst < 1e-6, "sem %d: empty-row output off by %.3g", sem, worst);
        free_result(&r);
        sparse_state_free(st);
        free_case(&c);
    }
}

// ---------------------------------------------------------------- packing and threads

static void test_packed_vs_alone(void) {
    const char *pats[] = {"sign_bin_lsh+key_selection", "sliding_window+dilated", "full", "argmax_lsh"};
    for (int p = 0; p < 4; p++)
        for (int sem = 0; sem < 2; sem++) {
            tcase c;
            make_case(&c, pats[p], (hax_semantics)sem, 707, LENS, NSEQ);
            tresult r;
            hax_sparse_state *st = run_impl(&c, &r, 0.5f, 1);
            int k = c.cfg.k_c > 0 ? c.cfg.k_c : 1, bad = 0;
            double gate = 0, *dW = xcalloc(2 * NN * EE, sizeof(double));
            double edx = 0, ea = 0;
            for (int s = 0; s < NSEQ; s++) {
                tcase one;
                make_case(&one, pats[p], (hax_semantics)sem, 707, LENS + s, 1);
                int o = c.seq_off[s], n = LENS[s];
                memcpy(one.X, c.X + (size_t)o * LDX, sizeof(float) * n * LDX);
                memcpy(one.R, c.R + (size_t)o * EE, sizeof(float) * n * EE);
                memcpy(one.cand, c.cand + s * k, sizeof(int) * k);
                tresult r1;
                hax_sparse_state *st1 = run_impl(&one, &r1, 0.5f, 1);
                gate += r1.gate;
                ea = fmax(ea, rel_err(r1.attn, r.attn + (size_t)o * EE, (size_t)n * EE));
                edx = fmax(edx, rel_err(r1.dX, r.dX + (size_t)o * LDX, (size_t)n * LDX));
                for (int i = 0; i < 2 * NN * EE; i++) dW[i] += r1.dW[i];
                for (int t = 0; t < n; t++) {
                    bad += st1->q_bucket[t] != st->q_bucket[o + t];
                    bad += st1->allow_off[t + 1] - st1->allow_off[t] !=
                           st->allow_off[o + t + 1] - st->allow_off[o + t];
                }
                free_result(&r1);
                sparse_state_free(st1);
                free_case(&one);
            }
            CHECK(bad == 0, "%s sem %d: %d rows with other buckets or list sizes alone", pats[p], sem, bad);
            // (bit-identical here; a tolerance in case a BLAS blocks rows differently)
            CHECK(ea < 1e-6 && edx < 1e-6, "%s sem %d: attn %.3g, dX %.3g packed vs alone", pats[p],
                  sem, ea, edx);
            CHECK(fabs(gate - r.gate) <= 1e-9 * fabs(gate) + 1e-12, "%s: gate %g vs %g", pats[p], gate, r.gate);
            CHECK(rel_err_d(r.dW, dW, 2 * NN, EE, EE, EE) < 1e-6, "%s sem %d: dW_xx packed vs alone",
                  pats[p], sem);
            free(dW);
            free_result(&r);
            sparse_state_free(st);
            free_case(&c);
        }
}

static void test_threads(void) {
    const char *pats[] = {"sign_bin_lsh+key_selection", "dilated", "full", "sliding_window+sink"};
    for (int p = 0; p < 4; p++) {
        tcase c;
        make_case(&c, pats[p], SEMANTICS_REFERENCE, 808, LENS, NSEQ);
        tresult r[2];
        for (int th = 0; th < 2; th++) {
            omp_set_num_threads(th + 1);
            sparse_state_free(run_impl(&c, &r[th], 0.5f, 1));
        }
        omp_set_num_threads(2);
        int same = memcmp(r[0].attn, r[1].attn, sizeof(float) * c.n_tok * EE) == 0 &&
                   memcmp(r[0].dX, r[1].dX, sizeof(float) * c.n_tok * LDX) == 0 &&
                   memcmp(r[0].dW, r[1].dW, sizeof(float) * 2 * NN * EE) == 0 &&
                   memcmp(r[0].dks, r[1].dks, sizeof(float) * NPARAM) == 0 && r[0].gate == r[1].gate;
        CHECK(same, "%s: 1 thread and 2 threads differ", pats[p]);
        free_result(&r[0]), free_result(&r[1]);
        free_case(&c);
    }
}

// A rank may hold no sequence of a batch: nothing to do, no error.
static void test_empty_batch(void) {
    tcase c;
    make_case(&c, "sign_bin_lsh+key_selection", SEMANTICS_REFERENCE, 909, LENS, NSEQ);
    hax_sparse_state *st = sparse_state_alloc(&c.cfg, c.n_tok, NSEQ, L_PAD);
    hax_batch b0 = c.b;
    b0.n_seq = 0, b0.n_tok = 0;
    ks_params kp = ks_flat_params(c.ksp, NN);
    float attn[1] = {7}, dX[1] = {0}, dW[1] = {0};
    double gl = sparse_forward(st, &c.cfg, &b0, c.X, LDX, c.W, &kp, c.Hm, c.cand, 1, attn, EE);
    sparse_backward(st, &c.cfg, &b0, attn, EE, 1.0f, c.X, LDX, c.W, &kp, dX, LDX, dW, NULL);
    CHECK(gl == 0 && attn[0] == 7 && dX[0] == 0 && dW[0] == 0, "empty batch touched outputs");
    sparse_state_free(st);
    free_case(&c);
}

// Runs the named refusal case in a fresh process (fork + exec of this
// program: a forked child must not touch OpenMP); returns its exit status
// (hax_die exits 1).
static int exit_status_of(const char *name) {
    fflush(stdout), fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(99);
        execl("/proc/self/exe", "test_sparse", "--case", name, (char *)NULL);
        _exit(98);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void die_too_long(void) {  // a sequence longer than model_len (reference semantics)
    tcase c;
    make_case(&c, "sliding_window", SEMANTICS_REFERENCE, 1, LENS, NSEQ);
    c.b.model_len = 10;
    tresult r;
    run_impl(&c, &r, 0, 0);
}

static void die_no_hash(void) {  // LSH without a hash matrix
    tcase c;
    make_case(&c, "sign_bin_lsh", SEMANTICS_REFERENCE, 1, LENS, NSEQ);
    hax_sparse_state *st = sparse_state_alloc(&c.cfg, c.n_tok, NSEQ, L_PAD);
    float *attn = xmalloc(sizeof(float) * c.n_tok * EE);
    sparse_forward(st, &c.cfg, &c.b, c.X, LDX, c.W, NULL, NULL, NULL, 0, attn, EE);
}

static void die_no_cand(void) {  // key selection in training without candidates
    tcase c;
    make_case(&c, "key_selection", SEMANTICS_REFERENCE, 1, LENS, NSEQ);
    hax_sparse_state *st = sparse_state_alloc(&c.cfg, c.n_tok, NSEQ, L_PAD);
    float *attn = xmalloc(sizeof(float) * c.n_tok * EE);
    ks_params kp = ks_flat_params(c.ksp, NN);
    sparse_forward(st, &c.cfg, &c.b, c.X, LDX, c.W, &kp, NULL, NULL, 1, attn, EE);
}

static void die_two_lsh(void) {  // sign_bin_lsh + argmax_lsh (one bucket set per layer)
    tcase c;
    make_case(&c, "sign_bin_lsh+argmax_lsh", SEMANTICS_REFERENCE, 1, LENS, NSEQ);
    sparse_state_alloc(&c.cfg, c.n_tok, NSEQ, L_PAD);
}

static void ok_run(void) {  // the control: a good call exits 0
    tcase c;
    make_case(&c, "sliding_window", SEMANTICS_REFERENCE, 1, LENS, NSEQ);
    tresult r;
    run_impl(&c, &r, 0, 1);
}

static const struct {
    const char *name;
    void (*fn)(void);
} CASES[] = {{"ok", ok_run}, {"too_long", die_too_long}, {"no_hash", die_no_hash},
             {"no_cand", die_no_cand}, {"two_lsh", die_two_lsh}};

static void test_refusals(void) {
    CHECK(exit_status_of("ok") == 0, "a good call failed");
    CHECK(exit_status_of("too_long") == 1, "a sequence longer than model_len was accepted");
    CHECK(exit_status_of("no_hash") == 1, "LSH without a hash matrix was accepted");
    CHECK(exit_status_of("no_cand") == 1, "KS training without candidates was accepted");
    CHECK(exit_status_of("two_lsh") == 1, "sign_bin_lsh+argmax_lsh was accepted");
}

// ---------------------------------------------------------------- scaling (printed)

static void bench_hax(int n, double *us_per_tok, double *keys_per_row, int *max_row) {
    hax_model_config cfg = {0};
    cfg.state_size = 16, cfg.intermediate_size = 128, cfg.sparse_keys = 64, cfg.num_hash = 8;
    cfg.data_max_length = 2048, cfg.semantics = SEMANTICS_REFERENCE;
    char err[200];
    if (model_config_set_sparse(&cfg, "sign_bin_lsh+key_selection", err, sizeof err)) hax_die("%s", err);
    int N = 16, E = 128, D = 2 * N, k = cfg.k_c, off[2] = {0, n};
    hax_batch b = {0};
    b.n_seq = 1, b.n_tok = n, b.seq_off = off, b.model_len = n, b.global_n_seq = 1;
    float *X = xmalloc(sizeof(float) * n * E), *W = xmalloc(sizeof(float) * D * E);
    float *Hm = xmalloc(sizeof(float) * N * 8), *attn = xmalloc(sizeof(float) * n * E);
    float *dX = xcalloc((size_t)n * E, sizeof(float)), *dW = xcalloc(D * E, sizeof(float));
    int np = KS_FLAT_FLOATS(N);
    float *kp = xmalloc(sizeof(float) * np), *dk = xcalloc(np, sizeof(float));
    int *cand = xmalloc(sizeof(int) * k);
    test_fill(X, (size_t)n * E, 1, 1.0f), test_fill(W, D * E, 2, 0.1f), test_fill(Hm, N * 8, 3, 1.0f);
    test_fill(kp, np, 4, 0.1f);
    for (int i = 0; i < k; i++) cand[i] = (int)((long)i * n / k);
    ks_params p = ks_flat_params(kp, N);
    ks_grads g = ks_flat_grads(dk, N);
    hax_sparse_state *st = sparse_state_alloc(&cfg, n, 1, n);
    double t0 = hax_now();
    int reps = n <= 1024 ? 4 : 1;
    for (int rep = 0; rep < reps; rep++) {
        sparse_forward(st, &cfg, &b, X, E, W, &p, Hm, cand, 1, attn, E);
        sparse_backward(st, &cfg, &b, attn, E, 0.1f, X, E, W, &p, dX, E, dW, &g);
    }
    *us_per_tok = (hax_now() - t0) / reps / n * 1e6;
    *keys_per_row = (double)st->allow_off[n] / n;
    *max_row = 0;
    for (int t = 0; t < n; t++)
        if (st->allow_off[t + 1] - st->allow_off[t] > *max_row) *max_row = st->allow_off[t + 1] - st->allow_off[t];
    sparse_state_free(st);
    free(X), free(W), free(Hm), free(attn), free(dX), free(dW), free(kp), free(dk), free(cand);
}

static void test_scaling_printed(void) {
    double a, b, ka, kb;
    int ma, mb;
    bench_hax(1024, &a, &ka, &ma);
    bench_hax(8192, &b, &kb, &mb);
    // Rows grow as the LSH buckets fill (up to k_c same-bucket keys), so the
    // cost per token may rise; per gathered key it should stay about flat.
    printf("     HAX branch (N 16, E 128, k 32+32) fwd+bwd: %.2f us/token at n = 1024 (%.1f keys/row), "
           "%.2f us/token at n = 8192 (%.1f keys/row); per key %.3f vs %.3f us\n", a, ka, b, kb, a / ka, b / kb);
    CHECK(a > 0 && b > 0, "timing");
    CHECK(ma <= 64 && mb <= 64, "every row holds at most k = 64 keys: longest %d and %d", ma, mb);
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--case") == 0) {  // a refusal case, run alone
        for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++)
            if (strcmp(argv[2], CASES[i].name) == 0) CASES[i].fn();
        return 0;
    }
    RUN(test_lsh_cap);
    RUN(test_sink_dilation);
    RUN(test_empty_rows);
    RUN(test_packed_vs_alone);
    RUN(test_threads);
    RUN(test_empty_batch);
    RUN(test_refusals);
    RUN(test_scaling_printed);
    return test_summary();
}
