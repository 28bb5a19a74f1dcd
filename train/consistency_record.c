/* The consistency record of a student's state.json (see consistency_record.h). */
#include "consistency_record.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fatal.h"

static const int supported_steps[] = {1, 2, 4};
#define SUPPORTED_COUNT ((int)(sizeof supported_steps / sizeof supported_steps[0]))

char *consistency_record_json(const ldm_config *config, const char *teacher) {
    const distill_config *dc = &config->distill;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "teacher", teacher);
    cJSON_AddNumberToObject(root, "guidance", dc->guidance);
    if (dc->guidance_max > 0) cJSON_AddNumberToObject(root, "guidance_max", dc->guidance_max);
    cJSON_AddNumberToObject(root, "sigma_min", dc->sigma_min);
    cJSON_AddNumberToObject(root, "sigma_max", dc->sigma_max);
    cJSON_AddNumberToObject(root, "rho", dc->rho);
    cJSON_AddNumberToObject(root, "num_points", dc->num_points);
    cJSON *points = cJSON_AddObjectToObject(root, "sampling_sigmas");
    for (int i = 0; i < SUPPORTED_COUNT; i++) {
        double sigmas[CONSISTENCY_MAX_STEPS];
        consistency_default_points(supported_steps[i], dc->sigma_min, dc->sigma_max, dc->rho, sigmas);
        char name[16];
        snprintf(name, sizeof name, "%d", supported_steps[i]);
        cJSON_AddItemToObject(points, name, cJSON_CreateDoubleArray(sigmas, supported_steps[i]));
    }
    char *printed = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!printed) fatal_internal("out of memory writing the consistency record");
    char *copy = xstrdup(printed);
    cJSON_free(printed);
    return copy;
}

void consistency_record_sampler(const char *json, const char *checkpoint, int steps, consistency_sampler_options *out) {
    memset(out, 0, sizeof *out);
    cJSON *root = cJSON_Parse(json);
    const cJSON *sigma_min = cJSON_GetObjectItemCaseSensitive(root, "sigma_min");
    const cJSON *points = cJSON_GetObjectItemCaseSensitive(root, "sampling_sigmas");
    if (!cJSON_IsObject(root) || !cJSON_IsNumber(sigma_min) || !(sigma_min->valuedouble > 0) || !cJSON_IsObject(points))
        fatal_input("%s/state.json: consistency: expected an object with sigma_min (a number > 0) and sampling_sigmas (an object)",
                    checkpoint);
    if (steps == 0) { /* sigma_min only: the caller brings its own points */
        out->sigma_min = sigma_min->valuedouble;
        cJSON_Delete(root);
        return;
    }
    char name[16], available[128] = "";
    snprintf(name, sizeof name, "%d", steps);
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(points, name);
    if (!list) {
        size_t used = 0;
        const cJSON *entry;
        cJSON_ArrayForEach(entry, points) {
            int n = snprintf(available + used, sizeof available - used, "%s%s", used ? ", " : "", entry->string);
            if (n < 0 || (size_t)n >= sizeof available - used) break;
            used += (size_t)n;
        }
        cJSON_Delete(root);
        fatal_input("ldm sample: option --steps: the consistency model %s has sigma points for %s steps, not %d",
                    checkpoint, available, steps);
    }
    int n = cJSON_GetArraySize(list);
    if (!cJSON_IsArray(list) || n != steps || n > CONSISTENCY_MAX_STEPS)
        fatal_input("%s/state.json: consistency.sampling_sigmas.%s: expected %d numbers", checkpoint, name, steps);
    for (int k = 0; k < n; k++) {
        const cJSON *v = cJSON_GetArrayItem(list, k);
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || !(v->valuedouble > sigma_min->valuedouble) ||
            (k > 0 && !(v->valuedouble < out->sigmas[k - 1])))
            fatal_input("%s/state.json: consistency.sampling_sigmas.%s: expected decreasing numbers above sigma_min", checkpoint, name);
        out->sigmas[k] = v->valuedouble;
    }
    out->steps = steps;
    out->sigma_min = sigma_min->valuedouble;
    cJSON_Delete(root);
}

/* "a/b/step-00000150 (step 150, ema weights)" -> "step-00000150 (step 150, ema weights)" */
static const char *teacher_name(const char *description) {
    const char *slash = strrchr(description, '/');
    return slash ? slash + 1 : description;
}

void consistency_record_check_resume(const char *saved_json, const char *current_json, const char *source) {
    cJSON *saved = cJSON_Parse(saved_json), *current = cJSON_Parse(current_json);
    if (!cJSON_IsObject(saved)) fatal_input("%s/state.json: consistency: expected an object", source);
    const cJSON *item;
    cJSON_ArrayForEach(item, current) {
        const cJSON *before = cJSON_GetObjectItemCaseSensitive(saved, item->string);
        int same = before != NULL && cJSON_Compare(before, item, 1);
        if (before && !same && strcmp(item->string, "teacher") == 0 && cJSON_IsString(before) && cJSON_IsString(item))
            same = strcmp(teacher_name(before->valuestring), teacher_name(item->valuestring)) == 0;
        if (!same) {
            char *theirs = before ? cJSON_PrintUnformatted(before) : NULL, *mine = cJSON_PrintUnformatted(item);
            fatal_input("%s: consistency.%s is %s in the checkpoint but %s in this run (a distillation resumes with "
                        "its own --teacher and distill settings)", source, item->string, theirs ? theirs : "missing",
                        mine);
        }
    }
    /* A member this run does not have (a guidance range) must not be lost either. */
    cJSON_ArrayForEach(item, saved)
        if (!cJSON_GetObjectItemCaseSensitive(current, item->string)) {
            char *theirs = cJSON_PrintUnformatted(item);
            fatal_input("%s: consistency.%s is %s in the checkpoint but not set in this run (a distillation resumes "
                        "with its own --teacher and distill settings)", source, item->string, theirs);
        }
    cJSON_Delete(saved);
    cJSON_Delete(current);
}
