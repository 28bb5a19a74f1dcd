/* Tests of the config loader (train/config.c): defaults, the shipped configs,
 * every class of error (each must return -1, leave the config untouched and give
 * one line naming the file or override and the key), --set overrides, and the
 * round trip through config_to_json. Bad files are written to a mkdtemp folder.
 * Run from the source root (ctest does) so that configs/ is found. Set
 * LDM_TEST_VERBOSE=1 to print every error message checked. */
#include "config.h"
#include "test_util.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

static char temp_dir[] = "/tmp/ldm_test_config_XXXXXX";
static char *temp_paths[128];
static int temp_count;
static int verbose;

/* Writes LEN bytes of TEXT to DIR/NAME; returns the path (freed at the end). */
static const char *temp_file_n(const char *name, const char *text, size_t len) {
    size_t n = strlen(temp_dir) + strlen(name) + 2;
    char *path = malloc(n);
    snprintf(path, n, "%s/%s", temp_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(text, 1, len, f) != len || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    if (temp_count < (int)(sizeof temp_paths / sizeof temp_paths[0])) {
        temp_paths[temp_count++] = path;
    } else {
        fprintf(stderr, "too many temp files\n");
        exit(1);
    }
    return path;
}

static const char *temp_file(const char *name, const char *text) { return temp_file_n(name, text, strlen(text)); }

/* config_load must fail: -1, the config untouched, one line holding each needle.
 * A macro, so that a failure reports the line of the case. */
#define EXPECT_FAIL(path, overrides, count, ...)                                                  \
    do {                                                                                          \
        ldm_config c_, before_;                                                                   \
        config_defaults(&c_);                                                                     \
        c_.train.seed = 4242; /* not a default: a load that wrote anything shows */               \
        memcpy(&before_, &c_, sizeof c_);                                                         \
        char err_[1024];                                                                          \
        strcpy(err_, "(untouched)");                                                              \
        int rc_ = config_load(&c_, (path), (overrides), (count), err_, sizeof err_);              \
        CHECK_MSG(rc_ == -1, "rc %d, err \"%s\"", rc_, err_);                                     \
        CHECK_MSG(memcmp(&c_, &before_, sizeof c_) == 0, "config changed by a failed load");      \
        CHECK_MSG(strchr(err_, '\n') == NULL, "error is not one line: \"%s\"", err_);             \
        const char *needles_[] = {__VA_ARGS__}, *got_ = err_;                                     \
        for (size_t i_ = 0; i_ < sizeof needles_ / sizeof needles_[0]; i_++)                      \
            CHECK_STR_CONTAINS(got_, needles_[i_]);                                               \
        if (verbose) printf("  %s\n", err_);                                                      \
    } while (0)

/* config_load must fail with exactly this message. */
#define EXPECT_ERR_EQ(path, overrides, count, expected)                                           \
    do {                                                                                          \
        ldm_config c_;                                                                            \
        char err_[1024] = "";                                                                     \
        int rc_ = config_load(&c_, (path), (overrides), (count), err_, sizeof err_);              \
        CHECK_MSG(rc_ == -1 && strcmp(err_, (expected)) == 0, "rc %d, err \"%s\", want \"%s\"",   \
                  rc_, err_, (expected));                                                         \
    } while (0)

/* A file of one section with one key: {"SECTION": {KEY_AND_VALUE}}. */
static const char *one_key_file(const char *name, const char *section, const char *key_and_value) {
    char text[512];
    snprintf(text, sizeof text, "{\n  \"%s\": {\n    %s\n  }\n}\n", section, key_and_value);
    return temp_file(name, text);
}

static int load_ok(ldm_config *c, const char *path, const char *const *overrides, int count) {
    char err[1024] = "";
    int rc = config_load(c, path, overrides, count, err, sizeof err);
    CHECK_MSG(rc == 0, "loading %s: rc %d, err \"%s\"", path ? path : "(defaults)", rc, err);
    return rc;
}

static void test_defaults(void) {
    ldm_config c;
    memset(&c, 0xab, sizeof c);
    config_defaults(&c);
    CHECK(strcmp(c.model.type, "dit") == 0);
    CHECK(c.model.input_size == 8);
    CHECK(c.model.in_channels == 4);
    CHECK(c.model.patch_size == 1);
    CHECK(c.model.hidden_size == 384);
    CHECK(c.model.depth == 12);
    CHECK(c.model.num_heads == 6);
    CHECK(c.model.mlp_ratio == 4.0);
    CHECK(c.model.num_classes == 10);
    CHECK(c.model.class_dropout == 0.1);
    CHECK(c.diffusion.sigma_data == 0.5);
    CHECK(c.diffusion.p_mean == -1.2);
    CHECK(c.diffusion.p_std == 1.2);
    CHECK(c.train.steps == 100000);
    CHECK(c.train.batch_size == 256);
    CHECK(c.train.micro_batch == 0);
    CHECK(c.train.lr == 1e-4);
    CHECK(c.train.warmup_steps == 1000);
    CHECK(strcmp(c.train.lr_schedule, "constant") == 0);
    CHECK(c.train.weight_decay == 0.0);
    CHECK(c.train.grad_clip == 1.0);
    CHECK(c.train.ema_decay == 0.9999);
    CHECK(c.train.adam_beta1 == 0.9);
    CHECK(c.train.adam_beta2 == 0.999);
    CHECK(c.train.adam_eps == 1e-8);
    CHECK(strcmp(c.train.precision, "fp32") == 0);
    CHECK(c.train.loss_scale_initial == 65536.0 && c.train.loss_scale_growth_interval == 2000);
    CHECK(c.train.seed == 0);
    CHECK(c.train.log_every == 10);
    CHECK(c.train.ckpt_every == 1000);
    CHECK(c.train.ckpt_keep == 3);
    CHECK(c.train.sample_every == 5000);
    CHECK(c.autoencoder.in_channels == 3);
    CHECK(c.autoencoder.input_size == 32);
    CHECK(c.autoencoder.block_out_channels.count == 3);
    CHECK(c.autoencoder.block_out_channels.values[0] == 64);
    CHECK(c.autoencoder.block_out_channels.values[1] == 128);
    CHECK(c.autoencoder.block_out_channels.values[2] == 128);
    for (int i = 3; i < CONFIG_INT_LIST_MAX; i++) CHECK(c.autoencoder.block_out_channels.values[i] == 0);
    CHECK(c.autoencoder.layers_per_block == 1);
    CHECK(c.autoencoder.latent_channels == 4);
    CHECK(c.autoencoder.norm_groups == 32);
    CHECK(c.distill.num_points == 18 && c.distill.sigma_min == 0.002 && c.distill.sigma_max == 80.0);
    CHECK(c.distill.rho == 7.0 && c.distill.target_ema == 0.95 && strcmp(c.distill.loss, "pseudo_huber") == 0);
    CHECK(c.distill.huber_c == 0.0 && c.distill.guidance == 1.0 && c.distill.guidance_max == 0.0);
    CHECK(strcmp(c.device.type, "auto") == 0);
    CHECK(c.comm.timeout_s == 300.0);
    CHECK(c.autoencoder.kl_beta == 1e-6);
    CHECK(strcmp(c.autoencoder.reconstruction_loss, "l1") == 0);
    CHECK(c.autoencoder.sample_posterior == false);

    /* No file, no overrides: the defaults, and they pass their own validation. */
    ldm_config loaded, defaults;
    config_defaults(&defaults);
    memset(&loaded, 0xcd, sizeof loaded);
    if (load_ok(&loaded, NULL, NULL, 0) == 0) CHECK(memcmp(&loaded, &defaults, sizeof loaded) == 0);

    /* An empty object and a partial file: the keys left out take the defaults;
     * integers may be written in exponent form when exactly integral. */
    if (load_ok(&loaded, temp_file("empty-object.json", "{}"), NULL, 0) == 0)
        CHECK(memcmp(&loaded, &defaults, sizeof loaded) == 0);
    if (load_ok(&loaded, temp_file("partial.json", "{\"train\": {\"steps\": 1e3}, \"diffusion\": {}}"), NULL, 0) ==
        0) {
        CHECK(loaded.train.steps == 1000);
        loaded.train.steps = defaults.train.steps;
        CHECK(memcmp(&loaded, &defaults, sizeof loaded) == 0);
    }
}

static void test_shipped_configs(void) {
    ldm_config c, defaults;
    config_defaults(&defaults);
    if (load_ok(&c, "configs/tiny.json", NULL, 0) == 0) {
        CHECK(strcmp(c.model.type, "dit") == 0);
        CHECK(c.model.input_size == 8);
        CHECK(c.model.in_channels == 4);
        CHECK(c.model.patch_size == 2);
        CHECK(c.model.hidden_size == 64);
        CHECK(c.model.depth == 2);
        CHECK(c.model.num_heads == 4);
        CHECK(c.model.mlp_ratio == 4.0);
        CHECK(c.model.num_classes == 10);
        CHECK(c.model.class_dropout == 0.1);
        CHECK(c.train.steps == 200);
        CHECK(c.train.batch_size == 8);
        CHECK(c.train.lr == 1e-3);
        CHECK(c.train.warmup_steps == 10);
        CHECK(c.train.log_every == 10);
        CHECK(c.train.ckpt_every == 100);
        CHECK(c.train.ckpt_keep == 2);
        CHECK(c.train.sample_every == 0);
        /* Every other key at its default. */
        ldm_config rest = c;
        rest.model = defaults.model;
        rest.train.steps = defaults.train.steps;
        rest.train.batch_size = defaults.train.batch_size;
        rest.train.lr = defaults.train.lr;
        rest.train.warmup_steps = defaults.train.warmup_steps;
        rest.train.ckpt_every = defaults.train.ckpt_every;
        rest.train.ckpt_keep = defaults.train.ckpt_keep;
        rest.train.sample_every = defaults.train.sample_every;
        CHECK(memcmp(&rest, &defaults, sizeof rest) == 0);
    }
    /* dit-s.json writes out the DiT-S shape (docs/design.md), which is also the defaults. */
    if (load_ok(&c, "configs/dit-s.json", NULL, 0) == 0) {
        CHECK(c.model.hidden_size == 384 && c.model.depth == 12 && c.model.num_heads == 6);
        CHECK(c.model.patch_size == 1 && c.train.batch_size == 256 && c.train.lr == 1e-4);
        CHECK(memcmp(&c, &defaults, sizeof c) == 0);
    }
}

static void test_file_errors(void) {
    char missing[512];
    snprintf(missing, sizeof missing, "%s/no-such-file.json", temp_dir);
    char expected[1024];
    snprintf(expected, sizeof expected, "%s: cannot read: No such file or directory", missing);
    EXPECT_ERR_EQ(missing, NULL, 0, expected);
    EXPECT_FAIL(temp_dir, NULL, 0, temp_dir, ": cannot read: Is a directory");

    /* The line of the error, counted from cJSON's error position. */
    const char *bad = temp_file("bad-syntax.json", "{\n  \"model\": {\n    \"depth\": 2,,\n  }\n}\n");
    snprintf(expected, sizeof expected, "%s: not valid JSON near line 3", bad);
    EXPECT_ERR_EQ(bad, NULL, 0, expected);
    const char *trailing = temp_file("trailing.json", "{\"model\": {}}\n\n} extra\n");
    snprintf(expected, sizeof expected, "%s: not valid JSON near line 3", trailing);
    EXPECT_ERR_EQ(trailing, NULL, 0, expected);
    const char *unterminated = temp_file("unterminated.json", "{\n\"train\": {\n\"steps\": 10\n");
    EXPECT_FAIL(unterminated, NULL, 0, unterminated, ": not valid JSON near line");
    const char *empty = temp_file("empty.json", "");
    snprintf(expected, sizeof expected, "%s: not valid JSON near line 1", empty);
    EXPECT_ERR_EQ(empty, NULL, 0, expected);
    /* cJSON would read "dit\0junk" as "dit": a NUL byte anywhere is refused. */
    static const char with_nul[] = "{\n\"model\": {\n\"type\": \"dit\0junk\"}}";
    const char *nul = temp_file_n("nul.json", with_nul, sizeof with_nul - 1);
    EXPECT_FAIL(nul, NULL, 0, nul, ": not valid JSON near line 3");

    /* The top level must be an object. */
    const char *array = temp_file("array.json", "[1, 2]");
    EXPECT_FAIL(array, NULL, 0, array, "top level", "an array");
    const char *number = temp_file("number.json", "42");
    EXPECT_FAIL(number, NULL, 0, number, "top level", "got 42");
}

static void test_structure_errors(void) {
    const char *unknown_section = temp_file("unknown-section.json", "{\"modle\": {\"depth\": 2}}");
    char expected[1024];
    snprintf(expected, sizeof expected, "%s: modle: unknown section (known sections: model, diffusion, train, data, autoencoder, distill, device, comm)",
             unknown_section);
    EXPECT_ERR_EQ(unknown_section, NULL, 0, expected);

    const char *unknown_key = one_key_file("unknown-key.json", "train", "\"lr_schedul\": \"cosine\"");
    EXPECT_FAIL(unknown_key, NULL, 0, unknown_key, ": train.lr_schedul: unknown key",
                "(known keys in train: steps, batch_size, micro_batch, lr, ", "sample_every, max_nonfinite_steps)");
    /* Keys are case-sensitive. */
    const char *upper = one_key_file("upper.json", "train", "\"Steps\": 5");
    EXPECT_FAIL(upper, NULL, 0, upper, "train.Steps: unknown key");
    /* A key under the wrong section. */
    const char *wrong_section = one_key_file("wrong-section.json", "model", "\"steps\": 5");
    EXPECT_FAIL(wrong_section, NULL, 0, wrong_section, "model.steps: unknown key", "known keys in model: type,");

    const char *not_object = temp_file("section-array.json", "{\"model\": [1]}");
    EXPECT_FAIL(not_object, NULL, 0, not_object, ": model: expected an object, got an array");
    const char *dup_key = one_key_file("dup-key.json", "train", "\"steps\": 5, \"steps\": 6");
    EXPECT_FAIL(dup_key, NULL, 0, dup_key, ": train.steps: key given twice");
    const char *dup_section = temp_file("dup-section.json", "{\"train\": {}, \"train\": {\"steps\": 5}}");
    EXPECT_FAIL(dup_section, NULL, 0, dup_section, ": train: section given twice");
    /* Control characters in a name are not copied into the message. */
    const char *odd = temp_file("odd-name.json", "{\"train\": {\"a\\nb\": 1}}");
    EXPECT_FAIL(odd, NULL, 0, odd, "train.a?b: unknown key");
}

static void test_value_errors(void) {
    char expected[1024];
    /* The example of config.h, exactly. */
    const char *depth = one_key_file("depth.json", "model", "\"depth\": -3");
    snprintf(expected, sizeof expected, "%s: model.depth: expected an integer >= 1, got -3", depth);
    EXPECT_ERR_EQ(depth, NULL, 0, expected);

    /* Wrong JSON types. */
    const char *f;
    f = one_key_file("int-string.json", "model", "\"depth\": \"12\"");
    EXPECT_FAIL(f, NULL, 0, f, "model.depth: expected an integer >= 1, got \"12\"");
    f = one_key_file("int-fraction.json", "model", "\"depth\": 3.5");
    EXPECT_FAIL(f, NULL, 0, f, "model.depth: expected an integer >= 1, got 3.5");
    f = one_key_file("int64-fraction.json", "train", "\"steps\": 1.5");
    EXPECT_FAIL(f, NULL, 0, f, "train.steps: expected an integer >= 1, got 1.5");
    f = one_key_file("number-bool.json", "train", "\"lr\": true");
    EXPECT_FAIL(f, NULL, 0, f, "train.lr: expected a number > 0, got true");
    f = one_key_file("number-null.json", "diffusion", "\"p_mean\": null");
    EXPECT_FAIL(f, NULL, 0, f, "diffusion.p_mean: expected a number, got null");
    f = one_key_file("number-object.json", "train", "\"grad_clip\": {}");
    EXPECT_FAIL(f, NULL, 0, f, "train.grad_clip: expected a number >= 0, got an object");
    f = one_key_file("number-array.json", "model", "\"hidden_size\": [384]");
    EXPECT_FAIL(f, NULL, 0, f, "model.hidden_size: expected an integer >= 1, got an array");
    f = one_key_file("enum-number.json", "train", "\"precision\": 16");
    EXPECT_FAIL(f, NULL, 0, f, "train.precision: expected one of \"fp32\", \"bf16\", \"fp16\", got 16");
    f = one_key_file("enum-unknown.json", "train", "\"lr_schedule\": \"linear\"");
    EXPECT_FAIL(f, NULL, 0, f, "train.lr_schedule: expected one of \"constant\", \"cosine\", got \"linear\"");
    f = one_key_file("enum-case.json", "train", "\"precision\": \"FP32\"");
    EXPECT_FAIL(f, NULL, 0, f, "train.precision: expected one of", "got \"FP32\"");
    f = one_key_file("model-type.json", "model", "\"type\": \"unet\"");
    EXPECT_FAIL(f, NULL, 0, f, "model.type: expected one of \"dit\", got \"unet\"");

    /* Out of range, with open and closed bounds. */
    f = one_key_file("dropout.json", "model", "\"class_dropout\": 1.0");
    EXPECT_FAIL(f, NULL, 0, f, "model.class_dropout: expected a number in [0, 1), got 1");
    f = one_key_file("dropout-neg.json", "model", "\"class_dropout\": -0.1");
    EXPECT_FAIL(f, NULL, 0, f, "model.class_dropout: expected a number in [0, 1), got -0.1");
    f = one_key_file("lr-zero.json", "train", "\"lr\": 0");
    EXPECT_FAIL(f, NULL, 0, f, "train.lr: expected a number > 0, got 0");
    f = one_key_file("sigma.json", "diffusion", "\"sigma_data\": -0.5");
    EXPECT_FAIL(f, NULL, 0, f, "diffusion.sigma_data: expected a number > 0, got -0.5");
    f = one_key_file("ema.json", "train", "\"ema_decay\": 1");
    EXPECT_FAIL(f, NULL, 0, f, "train.ema_decay: expected a number in [0, 1), got 1");
    f = one_key_file("keep.json", "train", "\"ckpt_keep\": 1");
    EXPECT_FAIL(f, NULL, 0, f, "train.ckpt_keep: expected an integer >= 2, got 1");
    f = one_key_file("micro-neg.json", "train", "\"micro_batch\": -1");
    EXPECT_FAIL(f, NULL, 0, f, "train.micro_batch: expected an integer >= 0, got -1");
    f = one_key_file("warmup-neg.json", "train", "\"warmup_steps\": -1");
    EXPECT_FAIL(f, NULL, 0, f, "train.warmup_steps: expected an integer >= 0, got -1");
    f = one_key_file("seed-neg.json", "train", "\"seed\": -1");
    EXPECT_FAIL(f, NULL, 0, f, "train.seed: expected an integer >= 0, got -1");

    /* Integers must fit their C type; 64-bit ones must be exact in a double. */
    f = one_key_file("int-overflow.json", "train", "\"batch_size\": 3e9");
    EXPECT_FAIL(f, NULL, 0, f, "train.batch_size: expected an integer in [1, 2147483647], got 3000000000");
    f = one_key_file("steps-huge.json", "train", "\"steps\": 1e300");
    EXPECT_FAIL(f, NULL, 0, f, "train.steps: expected an integer", "9007199254740992", "got 1e+300");
    f = one_key_file("seed-inexact.json", "train", "\"seed\": 9007199254740994");
    EXPECT_FAIL(f, NULL, 0, f, "train.seed: expected an integer", "9007199254740992");
    f = one_key_file("number-inf.json", "train", "\"lr\": 1e999");
    EXPECT_FAIL(f, NULL, 0, f, "train.lr: expected a number > 0, got a number too large");
    /* A long string value is cut short in the message. */
    f = one_key_file("long-string.json", "model", "\"type\": \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"");
    EXPECT_FAIL(f, NULL, 0, f, "model.type: expected one of \"dit\", got \"xxxx", "...\"");

    /* The largest exact values and the limits themselves are accepted. */
    ldm_config c;
    f = one_key_file("limits.json", "train", "\"seed\": 9007199254740992, \"steps\": 9007199254740992, "
                     "\"batch_size\": 2147483647, \"ckpt_keep\": 2147483647, \"weight_decay\": 0, "
                     "\"micro_batch\": 0, \"sample_every\": 0, \"ema_decay\": 0, \"warmup_steps\": 0");
    if (load_ok(&c, f, NULL, 0) == 0) {
        CHECK(c.train.seed == UINT64_C(9007199254740992));
        CHECK(c.train.steps == INT64_C(9007199254740992));
        CHECK(c.train.batch_size == 2147483647);
        CHECK(c.train.ckpt_keep == 2147483647);
    }
}

static void test_cross_field_rules(void) {
    const char *f;
    f = temp_file("heads.json", "{\"model\": {\"hidden_size\": 64, \"num_heads\": 5}}");
    EXPECT_FAIL(f, NULL, 0, f, "model.hidden_size: expected a multiple of model.num_heads (5), got 64");
    f = temp_file("sincos.json", "{\"model\": {\"hidden_size\": 6, \"num_heads\": 3}}");
    EXPECT_FAIL(f, NULL, 0, f, "model.hidden_size: expected a multiple of 4", "got 6");
    f = temp_file("head-dim.json", "{\"model\": {\"hidden_size\": 4, \"num_heads\": 8}}");
    EXPECT_FAIL(f, NULL, 0, f, "model.num_heads: expected at most model.hidden_size (4)", "got 8");
    f = temp_file("patch.json", "{\"model\": {\"input_size\": 8, \"patch_size\": 3}}");
    EXPECT_FAIL(f, NULL, 0, f, "model.input_size: expected a multiple of model.patch_size (3), got 8");
    f = temp_file("patch-big.json", "{\"model\": {\"input_size\": 8, \"patch_size\": 16}}");
    EXPECT_FAIL(f, NULL, 0, f, "model.input_size: expected a multiple of model.patch_size (16), got 8");
    f = temp_file("mlp.json", "{\"model\": {\"hidden_size\": 64, \"num_heads\": 4, \"mlp_ratio\": 0.01}}");
    EXPECT_FAIL(f, NULL, 0, f, "model.mlp_ratio: expected an MLP width", "model.hidden_size 64, got 0.01");
    f = temp_file("mlp-huge.json", "{\"model\": {\"mlp_ratio\": 1e10}}");
    EXPECT_FAIL(f, NULL, 0, f, "model.mlp_ratio: expected an MLP width", "got 10000000000");
    f = temp_file("micro-big.json", "{\"train\": {\"batch_size\": 8, \"micro_batch\": 16}}");
    EXPECT_FAIL(f, NULL, 0, f, "train.micro_batch: expected 0 or at most train.batch_size (8), got 16");
    f = temp_file("micro-divisor.json", "{\"train\": {\"batch_size\": 8, \"micro_batch\": 3}}");
    EXPECT_FAIL(f, NULL, 0, f, "train.micro_batch: expected 0 or a divisor of train.batch_size (8), got 3");

    /* At the edges the rules pass: smallest model, micro_batch == batch_size. */
    ldm_config c;
    f = temp_file("edges.json", "{\"model\": {\"input_size\": 1, \"patch_size\": 1, \"hidden_size\": 4, "
                                "\"num_heads\": 4, \"mlp_ratio\": 0.25}, "
                                "\"train\": {\"batch_size\": 8, \"micro_batch\": 8}}");
    if (load_ok(&c, f, NULL, 0) == 0) CHECK(c.model.hidden_size == 4 && c.train.micro_batch == 8);
}

/* autoencoder.block_out_channels, the one integer-list key. */
static void test_int_list(void) {
    char expected[1024];
    const char *f = one_key_file("list-zero.json", "autoencoder", "\"block_out_channels\": [64, 0]");
    snprintf(expected, sizeof expected,
             "%s: autoencoder.block_out_channels: expected a list of 1 to 8 integers >= 1, got [64,0]", f);
    EXPECT_ERR_EQ(f, NULL, 0, expected);
    const char *want = "autoencoder.block_out_channels: expected a list of 1 to 8 integers >= 1, got ";
    f = one_key_file("list-number.json", "autoencoder", "\"block_out_channels\": 64");
    EXPECT_FAIL(f, NULL, 0, f, want, "got 64");
    f = one_key_file("list-empty.json", "autoencoder", "\"block_out_channels\": []");
    EXPECT_FAIL(f, NULL, 0, f, want, "got []");
    f = one_key_file("list-long.json", "autoencoder", "\"block_out_channels\": [1, 1, 1, 1, 1, 1, 1, 1, 1]");
    EXPECT_FAIL(f, NULL, 0, f, want, "got [1,1,1,1,1,1,1,1,1]");
    f = one_key_file("list-fraction.json", "autoencoder", "\"block_out_channels\": [64, 1.5]");
    EXPECT_FAIL(f, NULL, 0, f, want, "got [64,1.5]");
    f = one_key_file("list-string.json", "autoencoder", "\"block_out_channels\": [\"64\"]");
    EXPECT_FAIL(f, NULL, 0, f, want, "got [\"64\"]");
    f = one_key_file("list-nested.json", "autoencoder", "\"block_out_channels\": [[64]]");
    EXPECT_FAIL(f, NULL, 0, f, want, "got [[64]]");
    f = one_key_file("list-null.json", "autoencoder", "\"block_out_channels\": [64, null]");
    EXPECT_FAIL(f, NULL, 0, f, want, "got [64,null]");
    f = one_key_file("list-object.json", "autoencoder", "\"block_out_channels\": {\"a\": 1}");
    EXPECT_FAIL(f, NULL, 0, f, want, "got an object");
    /* An element beyond int names the type's limit, as for a plain int key. */
    f = one_key_file("list-overflow.json", "autoencoder", "\"block_out_channels\": [3e9]");
    EXPECT_FAIL(f, NULL, 0, f, "autoencoder.block_out_channels: expected a list of 1 to 8 integers in [1, 2147483647]",
                "got [3000000000]");
    /* A long list value is cut short in the message. */
    f = one_key_file("list-long-text.json", "autoencoder",
                     "\"block_out_channels\": [1000000, 1000000, 1000000, 1000000, 1000000, 1000000, 1000000, 0]");
    EXPECT_FAIL(f, NULL, 0, f, want, "got [1000000,1000000,", "...");

    /* The other autoencoder keys. */
    f = one_key_file("ae-loss.json", "autoencoder", "\"reconstruction_loss\": \"l3\"");
    EXPECT_FAIL(f, NULL, 0, f, "autoencoder.reconstruction_loss: expected one of \"l1\", \"l2\", got \"l3\"");
    f = one_key_file("ae-beta.json", "autoencoder", "\"kl_beta\": -1e-6");
    EXPECT_FAIL(f, NULL, 0, f, "autoencoder.kl_beta: expected a number >= 0, got -1e-06");
    f = one_key_file("ae-layers.json", "autoencoder", "\"layers_per_block\": 0");
    EXPECT_FAIL(f, NULL, 0, f, "autoencoder.layers_per_block: expected an integer >= 1, got 0");
    f = one_key_file("ae-sample.json", "autoencoder", "\"sample_posterior\": 1");
    EXPECT_FAIL(f, NULL, 0, f, "autoencoder.sample_posterior: expected true or false, got 1");

    /* Cross-field: every width a multiple of norm_groups; input_size a multiple of
     * 2^(levels - 1). */
    f = temp_file("ae-groups.json", "{\"autoencoder\": {\"block_out_channels\": [64, 100], \"norm_groups\": 32}}");
    snprintf(expected, sizeof expected,
             "%s: autoencoder.block_out_channels: expected multiples of autoencoder.norm_groups (32), got [64, 100]", f);
    EXPECT_ERR_EQ(f, NULL, 0, expected);
    f = temp_file("ae-size.json", "{\"autoencoder\": {\"input_size\": 28, \"block_out_channels\": [32, 64, 64, 64]}}");
    EXPECT_FAIL(f, NULL, 0, f, "autoencoder.input_size: expected a multiple of 8 (2^(levels - 1) with 4 levels",
                "got 28");
    {
        const char *sets[] = {"autoencoder.norm_groups=48"};
        EXPECT_FAIL(NULL, sets, 1, "--set autoencoder.norm_groups=48: autoencoder.block_out_channels: expected "
                                   "multiples of autoencoder.norm_groups (48), got [64, 128, 128]");
        const char *sets2[] = {"autoencoder.norm_groups=8", "autoencoder.block_out_channels=[8,8,8,8,8,8,8]"};
        EXPECT_FAIL(NULL, sets2, 2, "--set autoencoder.block_out_channels=[8,8,8,8,8,8,8]: autoencoder.input_size: "
                                    "expected a multiple of 64");
        const char *sets3[] = {"autoencoder.block_out_channels=[8, x]"};
        EXPECT_FAIL(NULL, sets3, 1, "--set autoencoder.block_out_channels=[8, x]: autoencoder.block_out_channels: "
                                    "expected a list of 1 to 8 integers >= 1, got \"[8, x]\"");
    }

    /* Accepted: an override as a JSON list, a single level (no downsampling, any
     * input size), and the SD VAE shape. */
    ldm_config c;
    {
        const char *sets[] = {"autoencoder.block_out_channels=[8]", "autoencoder.norm_groups=8",
                              "autoencoder.input_size=7"};
        if (load_ok(&c, NULL, sets, 3) == 0) {
            CHECK(c.autoencoder.block_out_channels.count == 1 && c.autoencoder.block_out_channels.values[0] == 8);
            for (int i = 1; i < CONFIG_INT_LIST_MAX; i++) CHECK(c.autoencoder.block_out_channels.values[i] == 0);
        }
    }
    f = temp_file("ae-sd.json", "{\"autoencoder\": {\"input_size\": 512, \"block_out_channels\": [128, 256, 512, 512], "
                                "\"layers_per_block\": 2, \"latent_channels\": 4, \"norm_groups\": 32}}");
    if (load_ok(&c, f, NULL, 0) == 0) {
        CHECK(c.autoencoder.block_out_channels.count == 4 && c.autoencoder.block_out_channels.values[3] == 512);
        CHECK(c.autoencoder.layers_per_block == 2 && c.autoencoder.input_size == 512);
    }
    /* A failed list load leaves an earlier list untouched (config_load works on a copy). */
    f = one_key_file("list-late-bad.json", "autoencoder", "\"block_out_channels\": [16, 16, -1]");
    EXPECT_FAIL(f, NULL, 0, f, want, "got [16,16,-1]");
}

static void test_overrides(void) {
    ldm_config c;
    {
        const char *sets[] = {"train.steps=5", "train.lr=0.5", "train.lr_schedule=\"cosine\"", "train.precision=bf16",
                              "model.mlp_ratio=2", "train.seed=123", "train.steps=7"};
        if (load_ok(&c, "configs/tiny.json", sets, 7) == 0) {
            CHECK(c.train.steps == 7); /* the later override wins */
            CHECK(c.train.lr == 0.5);
            CHECK(strcmp(c.train.lr_schedule, "cosine") == 0);
            CHECK(strcmp(c.train.precision, "bf16") == 0);
            CHECK(c.model.mlp_ratio == 2.0);
            CHECK(c.train.seed == 123);
            CHECK(c.model.hidden_size == 64); /* the file's value where not overridden */
        }
    }
    {
        /* Without a file: overrides on the defaults, adding sections as needed. */
        const char *sets[] = {"diffusion.p_mean=-0.4", "train.lr_schedule=cosine"};
        if (load_ok(&c, NULL, sets, 2) == 0) {
            CHECK(c.diffusion.p_mean == -0.4);
            CHECK(strcmp(c.train.lr_schedule, "cosine") == 0);
            CHECK(c.model.hidden_size == 384);
        }
    }
    {
        /* Overrides are merged before validation: a bad file value that an
         * override replaces is never seen. */
        const char *f = one_key_file("fixed-by-set.json", "model", "\"depth\": -3");
        const char *sets[] = {"model.depth=2"};
        if (load_ok(&c, f, sets, 1) == 0) CHECK(c.model.depth == 2);
        const char *sets2[] = {"model.depth=2", "model.depth=-1"};
        EXPECT_FAIL(f, sets2, 2, "--set model.depth=-1: model.depth: expected an integer >= 1, got -1");
    }

    /* Bad overrides name the override, not the file. */
    {
        const char *sets[] = {"train.steps=5", "model.depth=-3"};
        EXPECT_ERR_EQ("configs/tiny.json", sets, 2, "--set model.depth=-3: model.depth: expected an integer >= 1, got -3");
    }
    {
        const char *sets[] = {"train.steps"};
        EXPECT_ERR_EQ("configs/tiny.json", sets, 1, "--set train.steps: expected section.key=value");
    }
    {
        const char *sets[] = {"steps=5"};
        EXPECT_ERR_EQ(NULL, sets, 1, "--set steps=5: expected section.key=value");
    }
    {
        const char *sets[] = {".steps=5"};
        EXPECT_FAIL(NULL, sets, 1, "--set .steps=5: expected section.key=value");
        const char *sets2[] = {"train.=5"};
        EXPECT_FAIL(NULL, sets2, 1, "--set train.=5: expected section.key=value");
        const char *sets3[] = {"=5"};
        EXPECT_FAIL(NULL, sets3, 1, "--set =5: expected section.key=value");
        /* The '.' must come before the '=': the value may hold dots. */
        const char *sets4[] = {"steps=1.5"};
        EXPECT_FAIL(NULL, sets4, 1, "--set steps=1.5: expected section.key=value");
    }
    {
        const char *sets[] = {"train.lr_schedul=cosine"};
        EXPECT_FAIL("configs/tiny.json", sets, 1,
                    "--set train.lr_schedul=cosine: train.lr_schedul: unknown key (known keys in train: steps, ");
        const char *sets2[] = {"trian.steps=5"};
        EXPECT_FAIL("configs/tiny.json", sets2, 1,
                    "--set trian.steps=5: trian: unknown section (known sections: model, diffusion, train, data, autoencoder, distill, device, comm)");
        const char *sets3[] = {"model.depth.x=5"};
        EXPECT_FAIL(NULL, sets3, 1, "--set model.depth.x=5: model.depth.x: unknown key");
    }
    {
        /* Values that do not parse as JSON are strings, and fail as such. */
        const char *sets[] = {"train.steps=abc"};
        EXPECT_FAIL(NULL, sets, 1, "--set train.steps=abc: train.steps: expected an integer >= 1, got \"abc\"");
        const char *sets2[] = {"train.steps="};
        EXPECT_FAIL(NULL, sets2, 1, "--set train.steps=: train.steps: expected an integer >= 1, got \"\"");
        const char *sets3[] = {"train.lr_schedule=linear"};
        EXPECT_FAIL(NULL, sets3, 1, "--set train.lr_schedule=linear: train.lr_schedule: expected one of");
        const char *sets4[] = {"train.steps=3.5"};
        EXPECT_FAIL(NULL, sets4, 1, "--set train.steps=3.5: train.steps: expected an integer >= 1, got 3.5");
        const char *sets5[] = {"train.lr=true"};
        EXPECT_FAIL(NULL, sets5, 1, "--set train.lr=true: train.lr: expected a number > 0, got true");
        const char *sets6[] = {"train.seed=\"5\""};
        EXPECT_FAIL(NULL, sets6, 1, "--set train.seed=\"5\": train.seed: expected an integer >= 0, got \"5\"");
    }
    {
        /* Cross-field errors blame the override that took part, else the file. */
        const char *sets[] = {"train.steps=5", "model.num_heads=5"};
        EXPECT_FAIL("configs/tiny.json", sets, 2, "--set model.num_heads=5: model.hidden_size: expected a multiple");
        const char *f = temp_file("micro-file.json", "{\"train\": {\"batch_size\": 8, \"micro_batch\": 3}}");
        const char *sets2[] = {"train.steps=5"};
        EXPECT_FAIL(f, sets2, 1, f, ": train.micro_batch: expected 0 or a divisor");
        const char *sets3[] = {"train.batch_size=9", "train.micro_batch=4"};
        EXPECT_FAIL("configs/tiny.json", sets3, 2, "--set train.micro_batch=4: train.micro_batch:");
    }
    {
        /* A file error comes before the overrides are looked at. */
        const char *f = one_key_file("unknown-with-set.json", "train", "\"nope\": 1");
        const char *sets[] = {"train.steps=5"};
        EXPECT_FAIL(f, sets, 1, f, ": train.nope: unknown key");
    }
}

static int count_children(const cJSON *object) {
    int n = 0;
    for (const cJSON *c = object ? object->child : NULL; c; c = c->next) n++;
    return n;
}

/* config -> JSON -> file -> config must give the same struct, byte for byte
 * (config_defaults zeroes padding and string tails), and the same JSON again. */
static void check_round_trip(const ldm_config *c, const char *name) {
    char *json = config_to_json(c);
    CHECK(json != NULL);
    if (!json) return;
    const char *f = temp_file(name, json);
    ldm_config back;
    if (load_ok(&back, f, NULL, 0) == 0) {
        CHECK_MSG(memcmp(&back, c, sizeof back) == 0, "%s: round trip changed the config", name);
        char *json2 = config_to_json(&back);
        CHECK(strcmp(json, json2) == 0);
        free(json2);
    }
    /* Every key of every section is present. */
    cJSON *root = cJSON_Parse(json);
    CHECK(root != NULL);
    CHECK(count_children(root) == 8);
    CHECK(count_children(cJSON_GetObjectItemCaseSensitive(root, "comm")) == 1);
    CHECK(count_children(cJSON_GetObjectItemCaseSensitive(root, "device")) == 1);
    CHECK(count_children(cJSON_GetObjectItemCaseSensitive(root, "distill")) == 9);
    CHECK(count_children(cJSON_GetObjectItemCaseSensitive(root, "model")) == 10);
    CHECK(count_children(cJSON_GetObjectItemCaseSensitive(root, "diffusion")) == 3);
    CHECK(count_children(cJSON_GetObjectItemCaseSensitive(root, "train")) == 24);
    CHECK(count_children(cJSON_GetObjectItemCaseSensitive(root, "autoencoder")) == 9);
    CHECK(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "autoencoder"),
                                                         "block_out_channels")));
    CHECK(strstr(json, "\n") != NULL); /* pretty-printed */
    cJSON_Delete(root);
    free(json);
}

static void test_round_trip(void) {
    ldm_config c;
    config_defaults(&c);
    check_round_trip(&c, "round-trip-defaults.json");

    const char *sets[] = {"train.seed=9007199254740992", "train.lr=0.30000000000000004", "train.ema_decay=0.99995",
                          "train.precision=fp16",        "train.lr_schedule=cosine",   "train.micro_batch=4",
                          "diffusion.p_mean=-1.0000000000000002", "train.adam_eps=1e-300",
                          "train.steps=123456789012345", "model.class_dropout=0"};
    if (load_ok(&c, "configs/tiny.json", sets, (int)(sizeof sets / sizeof sets[0])) == 0) {
        CHECK(c.train.seed == UINT64_C(9007199254740992));
        CHECK(c.train.lr == 0.1 + 0.2);
        check_round_trip(&c, "round-trip-tiny.json");
    }
    /* A list shorter than the default (the tail must read back as zeros), and the
     * longest one. */
    const char *ae_sets[] = {"autoencoder.block_out_channels=[8, 16]", "autoencoder.norm_groups=4",
                             "autoencoder.input_size=16", "autoencoder.reconstruction_loss=l2",
                             "autoencoder.sample_posterior=true", "autoencoder.kl_beta=0.25"};
    ldm_config ae;
    if (load_ok(&ae, NULL, ae_sets, (int)(sizeof ae_sets / sizeof ae_sets[0])) == 0) {
        CHECK(ae.autoencoder.block_out_channels.count == 2);
        check_round_trip(&ae, "round-trip-ae-short.json");
    }
    const char *long_sets[] = {"autoencoder.block_out_channels=[1,2,3,4,5,6,7,2147483647]",
                               "autoencoder.norm_groups=1", "autoencoder.input_size=128"};
    if (load_ok(&ae, NULL, long_sets, 3) == 0) {
        CHECK(ae.autoencoder.block_out_channels.count == 8);
        CHECK(ae.autoencoder.block_out_channels.values[7] == 2147483647);
        check_round_trip(&ae, "round-trip-ae-long.json");
    }

    /* The JSON itself reads as expected. */
    char *json = config_to_json(&c);
    cJSON *root = cJSON_Parse(json);
    const cJSON *train = cJSON_GetObjectItemCaseSensitive(root, "train");
    CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(train, "precision")));
    CHECK(cJSON_GetObjectItemCaseSensitive(train, "steps")->valuedouble == 123456789012345.0);
    cJSON_Delete(root);
    free(json);
}

/* config_load_json_text: the same config from text as from the file holding it,
 * overrides applied, and errors naming the given source instead of a file. */
static void test_json_text(void) {
    ldm_config from_file, from_text;
    const char *sets[] = {"train.steps=7"};
    char err[1024] = "";
    if (load_ok(&from_file, "configs/ae-tiny.json", sets, 1) == 0) {
        char *json = config_to_json(&from_file);
        memset(&from_text, 0xab, sizeof from_text);
        int rc = config_load_json_text(&from_text, json, "ckpt/state.json: config", NULL, 0, err, sizeof err);
        CHECK_MSG(rc == 0, "rc %d, err \"%s\"", rc, err);
        CHECK(memcmp(&from_text, &from_file, sizeof from_text) == 0);
        CHECK(from_text.train.steps == 7 && from_text.autoencoder.latent_channels == 2);
        free(json);
    }
    const char *more[] = {"train.seed=3"};
    CHECK(config_load_json_text(&from_text, "{\"train\": {\"steps\": 5}}", "text", more, 1, err, sizeof err) == 0);
    CHECK(from_text.train.steps == 5 && from_text.train.seed == 3);

    /* Errors name the source; a failed load leaves the config as it was. */
    struct {
        const char *text, *expected;
    } bad[] = {
        {"{\"train\": {\"steps\": 0}}", "src: train.steps: expected an integer >= 1, got 0"},
        {"{\"modle\": {}}", "src: modle: unknown section"},
        {"[1, 2]", "src: expected a JSON object at the top level, got an array"},
        {"{\"train\": ", "src: not valid JSON near line 1"},
        {"{\"autoencoder\": {\"input_size\": 15}}", "src: autoencoder.input_size: expected a multiple of 4"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ldm_config before;
        memcpy(&before, &from_text, sizeof before);
        strcpy(err, "(untouched)");
        int rc = config_load_json_text(&from_text, bad[i].text, "src", NULL, 0, err, sizeof err);
        CHECK_MSG(rc == -1, "rc %d for %s", rc, bad[i].text);
        CHECK(memcmp(&before, &from_text, sizeof before) == 0);
        CHECK(strchr(err, '\n') == NULL);
        const char *message = err;
        CHECK_STR_CONTAINS(message, bad[i].expected);
        if (verbose) printf("  %s\n", err);
    }
}

int main(void) {
    verbose = getenv("LDM_TEST_VERBOSE") != NULL;
    if (!mkdtemp(temp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_defaults();
    test_shipped_configs();
    test_file_errors();
    test_structure_errors();
    test_value_errors();
    test_cross_field_rules();
    test_int_list();
    test_overrides();
    test_round_trip();
    test_json_text();
    for (int i = 0; i < temp_count; i++) {
        unlink(temp_paths[i]);
        free(temp_paths[i]);
    }
    rmdir(temp_dir);
    return test_finish("test_config");
}
