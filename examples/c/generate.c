/*
 * Generate latent video with the dfrt C API.
 *
 *   generate MODEL OUT [--seed S] [--frames F] [--policy P] [--height H] [--width W]
 *                      [--context FILE --rows N] [--heads-out FILE]
 *
 * MODEL is a dfrt runtime checkpoint (e.g. `dfrt-weights synth --preset tiny -o tiny.safetensors`).
 * The context is a raw little-endian float32 file [N, text_dim] (a text encoder's output);
 * without one, a fixed synthetic context of 4 rows is used. OUT receives the latents as raw
 * float32 [F, C, H, W]; the shape is printed on stdout. --heads-out writes the Dummy Forcing
 * head program (JSON) after the run.
 *
 * Build (from the repository root, after `cargo build --release -p dfrt-capi`):
 *   cc examples/c/generate.c -Icapi/include target/release/libdfrt.a -lpthread -ldl -lm -o generate
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dfrt.h"

/* Prints the failed call's status and message, and tells main to clean up. */
static int failed(const char *what, DfrtStatus st, const DfrtError *err) {
    if (st == DFRT_OK) return 0;
    fprintf(stderr, "generate: %s: %s: %s\n", what, dfrt_status_name(st), err->message);
    return 1;
}

static void on_progress(const DfrtProgress *p, void *user) {
    int *quiet = user;
    /* Once per chunk, after its last forward (the clean pass). */
    if (!*quiet && p->forward == p->forwards_per_chunk)
        fprintf(stderr, "chunk %zu/%zu done\n", p->chunk + 1, p->chunks_total);
}

/* A fixed context with exact values (small integers over 64), so that any language can
 * rebuild it bit for bit. */
static float *synthetic_context(size_t rows, size_t cols) {
    float *c = malloc(rows * cols * sizeof *c);
    if (!c) return NULL;
    for (size_t i = 0; i < rows * cols; i++) c[i] = (float)((long)((i * 37 + 11) % 129) - 64) / 64.0f;
    return c;
}

static float *read_floats(const char *path, size_t count) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return NULL; }
    float *v = malloc(count * sizeof *v);
    size_t got = v ? fread(v, sizeof *v, count, f) : 0;
    fclose(f);
    if (got != count) { fprintf(stderr, "generate: %s: expected %zu floats, read %zu\n", path, count, got); free(v); return NULL; }
    return v;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL OUT [--seed S] [--frames F] [--policy P] [--height H] [--width W] [--context FILE --rows N] [--heads-out FILE]\n", argv[0]);
        return 2;
    }
    const char *model_path = argv[1], *out_path = argv[2];
    const char *policy = "full", *context_path = NULL, *heads_out = NULL;
    unsigned long long seed = 0;
    size_t frames = 9, height = 8, width = 8, rows = 4;
    int quiet = 0;
    for (int i = 3; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(k, "--quiet")) { quiet = 1; continue; }
        if (!v) { fprintf(stderr, "generate: %s needs a value\n", k); return 2; }
        i++;
        if (!strcmp(k, "--seed")) seed = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--frames")) frames = strtoul(v, NULL, 10);
        else if (!strcmp(k, "--height")) height = strtoul(v, NULL, 10);
        else if (!strcmp(k, "--width")) width = strtoul(v, NULL, 10);
        else if (!strcmp(k, "--rows")) rows = strtoul(v, NULL, 10);
        else if (!strcmp(k, "--policy")) policy = v;
        else if (!strcmp(k, "--context")) context_path = v;
        else if (!strcmp(k, "--heads-out")) heads_out = v;
        else { fprintf(stderr, "generate: unknown option %s\n", k); return 2; }
    }

    DfrtError err;
    DfrtModel *model = NULL;
    DfrtSession *session = NULL;
    float *context = NULL, *chunk = NULL;
    char *json = NULL;
    FILE *out = NULL;
    int rc = 1;

    if (failed("load", dfrt_model_load(model_path, "f32", &model, &err), &err)) goto done;
    DfrtModelInfo mi;
    if (failed("model info", dfrt_model_info(model, &mi, &err), &err)) goto done;

    /* "cpu" takes no CUDA stream: pass NULL. */
    if (failed("session", dfrt_session_new(model, policy, height, width, frames, "cpu", NULL, &session, &err), &err)) goto done;
    /* The session holds its own reference to the weights: the model handle can go now. */
    dfrt_model_free(model);
    model = NULL;

    context = context_path ? read_floats(context_path, rows * mi.text_dim) : synthetic_context(rows, mi.text_dim);
    if (!context) goto done;
    if (failed("context", dfrt_session_set_context(session, context, rows, mi.text_dim, &err), &err)) goto done;
    if (failed("seed", dfrt_session_set_seed(session, seed, &err), &err)) goto done;

    DfrtSessionInfo si;
    if (failed("session info", dfrt_session_info(session, &si, &err), &err)) goto done;
    chunk = malloc(si.chunk_len * sizeof *chunk);
    out = fopen(out_path, "wb");
    if (!chunk || !out) { perror(out_path); goto done; }

    for (;;) {
        size_t written = 0;
        DfrtStatus st = dfrt_session_next_chunk(session, chunk, si.chunk_len, &written, on_progress, &quiet, &err);
        if (st == DFRT_ERR_FINISHED) break;
        if (failed("next chunk", st, &err)) goto done;
        if (fwrite(chunk, sizeof *chunk, written, out) != written) { perror(out_path); goto done; }
    }
    if (fclose(out) != 0) { out = NULL; perror(out_path); goto done; }
    out = NULL;
    printf("latents [%zu, %zu, %zu, %zu] f32 -> %s\n", si.frames, si.channels, si.height, si.width, out_path);

    if (heads_out) {
        /* Size query first, then the copy. */
        size_t needed = 0;
        if (failed("head program size", dfrt_session_head_program(session, NULL, 0, &needed, &err), &err)) goto done;
        json = malloc(needed);
        if (!json) goto done;
        if (failed("head program", dfrt_session_head_program(session, json, needed, NULL, &err), &err)) goto done;
        FILE *h = fopen(heads_out, "w");
        if (!h || fputs(json, h) < 0 || fclose(h) != 0) { perror(heads_out); goto done; }
        printf("head program (%zu bytes) -> %s\n", needed - 1, heads_out);
    }
    rc = 0;

done:
    if (out) fclose(out);
    free(json);
    free(chunk);
    free(context);
    dfrt_session_free(session);
    dfrt_model_free(model);
    return rc;
}
