/* A diffusers AutoencoderKL folder as ldm's KL autoencoder: the folder that
 * diffusers' save_pretrained writes (config.json and diffusion_pytorch_model.safetensors,
 * e.g. the Stable Diffusion VAE stabilityai/sd-vae-ft-ema). This file owns telling
 * such a folder from an ldm run, reading config.json into an autoencoder_shape
 * (refusing, in one line naming the file and field, what ldm's autoencoder cannot
 * express), and loading the weights into a model laid out for that shape.
 *
 * The tensor names are those ldm's autoencoder already uses (autoencoder.h), so the
 * weights load by name. Where diffusers has switches, ldm follows them:
 * mid_block_add_attention false is the shape's without_mid_attention;
 * use_quant_conv / use_post_quant_conv false (no such tensors in the file) load as
 * identity 1x1 convolutions, which change no value (1 * x + 0 * y + 0 is x exactly).
 *
 * The latents' scale. diffusers' pipelines multiply the posterior by scaling_factor
 * after encoding (after subtracting shift_factor where the config has one) and undo
 * it before decoding; ldm folds both into the 1x1 convolutions at load time, so the
 * loaded model maps images to scaled latents and back like any ldm autoencoder and
 * every caller (CPU or GPU, encode, decode, sampling) gets the scale for free:
 *   quant_conv, mean rows:      W' = s W,   b' = s (b - shift)
 *   quant_conv, log-variance:   b' = b + 2 ln s (the variance of s z is s^2 var)
 *   post_quant_conv:            W' = W / s, b' = b + W shift (summed over inputs)
 * so that encode gives s (mean - shift) and a posterior sample s (z - shift), and
 * decode(z') = diffusers' decode(z' / s + shift). Rounding: one more float product per
 * weight (relative 6e-8). The one difference: ldm clamps the log-variance to [-30, 20]
 * after the shift by 2 ln s, diffusers before it, which matters only for a log-variance
 * within |2 ln s| of a bound (a variance of e^-30 or e^20). */
#ifndef LDM_AUTOENCODER_DIFFUSERS_H
#define LDM_AUTOENCODER_DIFFUSERS_H

#include "autoencoder.h"

#define AE_DIFFUSERS_CONFIG "config.json"
#define AE_DIFFUSERS_WEIGHTS "diffusion_pytorch_model.safetensors"
#define AE_DIFFUSERS_WEIGHTS_FP16 "diffusion_pytorch_model.fp16.safetensors" /* save_pretrained(variant="fp16") */

typedef struct {
    autoencoder_shape shape;  /* input_size: sample_size */
    double scaling_factor;    /* > 0 */
    double shift_factor;      /* 0 when config.json has none or null */
    int use_quant_conv, use_post_quant_conv;
} autoencoder_diffusers_config;

/* 1 when PATH is a directory that holds a diffusers model: a
 * diffusion_pytorch_model*.safetensors file, or a config.json with a "_class_name"
 * (which ldm's own config.json never has). 0 otherwise (an ldm run or checkpoint). */
int autoencoder_diffusers_is_folder(const char *path);

/* Reads DIR/config.json; fatal_input, one line naming the file and the field, on
 * another _class_name, a missing or malformed field, or an option ldm's
 * autoencoder cannot express. */
void autoencoder_diffusers_read_config(const char *dir, autoencoder_diffusers_config *config);

/* The weights file of DIR (caller frees): diffusion_pytorch_model.safetensors, or
 * its fp16 variant when only that is there; fatal_input when neither is. */
char *autoencoder_diffusers_weights_path(const char *dir);

/* Loads the weights file of DIR into model (laid out for config->shape, any purpose
 * and input size), strictly by name and shape (fatal_input naming the file and the
 * tensor on a missing, unknown or misshapen one), with the absent 1x1 convolutions
 * made identities and the latents' scale folded in (above). */
void autoencoder_diffusers_load_weights(autoencoder_model *model, const char *dir,
                                        const autoencoder_diffusers_config *config);

#endif
