# Tests of --ae with a diffusers AutoencoderKL folder (tests/diffusers_vae_scenarios.sh,
# over the committed fixtures of tests/make_diffusers_vae_fixture.py): ldm encode and
# decode against diffusers' outputs, the scaling factor recorded and used, training
# pictures and ldm sample through it, and every folder ldm cannot express refused with
# one line and exit status 2. Included from tests/CMakeLists.txt (LDM_MPIRUN,
# LDM_SYSTEM_PYTHON and LDM_EXPECT_ERROR come from there and prepare_tests.cmake).

if(TARGET ldm)
  set(LDM_DVAE_WORK ${CMAKE_CURRENT_BINARY_DIR}/diffusers_vae)
  set(LDM_DVAE_COMMON ${LDM_DVAE_WORK}/common)
  string(REPLACE ";" " " ldm_dvae_mpirun "${LDM_MPIRUN}")
  set(ldm_dvae_env "LDM=$<TARGET_FILE:ldm>;LDM_MPIRUN=${ldm_dvae_mpirun};LDM_PYTHON=${LDM_SYSTEM_PYTHON};\
LDM_TESTS=${CMAKE_CURRENT_SOURCE_DIR};LDM_CONFIGS=${CMAKE_SOURCE_DIR}/configs")

  foreach(scenario setup encode decode train)
    add_test(NAME cli_diffusers_vae_${scenario}
      COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/diffusers_vae_scenarios.sh ${scenario} ${LDM_DVAE_WORK}/${scenario}
              ${LDM_DVAE_COMMON})
    set_tests_properties(cli_diffusers_vae_${scenario} PROPERTIES TIMEOUT 300 ENVIRONMENT "${ldm_dvae_env}")
    if(scenario STREQUAL "setup")
      set_tests_properties(cli_diffusers_vae_${scenario} PROPERTIES FIXTURES_SETUP diffusers_vae_inputs)
    else()
      set_tests_properties(cli_diffusers_vae_${scenario} PROPERTIES FIXTURES_REQUIRED diffusers_vae_inputs)
    endif()
  endforeach()

  # ldm_dvae_error(NAME REGEX ARGS...): ARGS must exit 2 with one line matching REGEX.
  function(ldm_dvae_error name regex)
    add_test(NAME cli_diffusers_vae_${name} COMMAND ${LDM_EXPECT_ERROR} 2 "${regex}" -- ${ARGN})
    set_tests_properties(cli_diffusers_vae_${name} PROPERTIES TIMEOUT 60 FIXTURES_REQUIRED diffusers_vae_inputs)
  endfunction()
  set(ldm $<TARGET_FILE:ldm>)
  set(c ${LDM_DVAE_COMMON})
  set(encode ${ldm} encode --data ${c}/images.h5 --out ${LDM_DVAE_WORK}/never.h5 --ae)
  set(weights "diffusion_pytorch_model[.]safetensors")

  ldm_dvae_error(other_class
    "^ldm: error: .*/bad-class/config[.]json: _class_name: \"UNet2DModel\", expected \"AutoencoderKL\""
    ${encode} ${c}/bad-class)
  ldm_dvae_error(missing_tensor
    "^ldm: error: .*/bad-missing-tensor/${weights}: tensor 'encoder[.]down_blocks[.]0[.]resnets[.]2[.]norm1[.]weight' is missing$"
    ${LDM_MPIRUN} -np 2 ${encode} ${c}/bad-missing-tensor)
  ldm_dvae_error(misshapen_tensor
    "^ldm: error: .*/bad-misshapen-tensor/${weights}: tensor '.*' has shape .*, the config gives "
    ${encode} ${c}/bad-misshapen-tensor)
  ldm_dvae_error(unknown_tensor
    "^ldm: error: .*/bad-unknown-tensor/${weights}: tensor 'quant_conv[.](weight|bias)' is not a parameter of this model"
    ${encode} ${c}/bad-unknown-tensor)
  ldm_dvae_error(act_fn "^ldm: error: .*/bad-act/config[.]json: act_fn: \"gelu\", but ldm's autoencoder has only silu$"
    ${encode} ${c}/bad-act)
  ldm_dvae_error(out_channels
    "^ldm: error: .*/bad-out-channels/config[.]json: out_channels: 1, but ldm's autoencoder decodes to its in_channels [(]3[)]$"
    ${encode} ${c}/bad-out-channels)
  ldm_dvae_error(block_type
    "^ldm: error: .*/bad-block-type/config[.]json: up_block_types[[]1[]]: \"AttnUpDecoderBlock2D\", but ldm's autoencoder has only UpDecoderBlock2D blocks$"
    ${encode} ${c}/bad-block-type)
  ldm_dvae_error(latents_mean "^ldm: error: .*/bad-latents-mean/config[.]json: latents_mean: per-channel latent statistics are not supported"
    ${encode} ${c}/bad-latents-mean)
  ldm_dvae_error(unknown_option
    "^ldm: error: .*/bad-unknown-option/config[.]json: norm_type: an option of AutoencoderKL that ldm's autoencoder does not know$"
    ${encode} ${c}/bad-unknown-option)
  ldm_dvae_error(scaling_factor "^ldm: error: .*/bad-scaling/config[.]json: scaling_factor: 0, expected a number > 0$"
    ${encode} ${c}/bad-scaling)
  ldm_dvae_error(no_weights "^ldm: error: .*/bad-no-weights: no ${weights} [(]a diffusers AutoencoderKL folder"
    ${encode} ${c}/bad-no-weights)
  ldm_dvae_error(image_size
    "^ldm: error: ldm encode: images of 6 x 6 do not fit the autoencoder .*/diffusers_vae_small: its encoder halves them 2 times [(]a multiple of 4[)]$"
    ${ldm} encode --data ${c}/small.h5 --out ${LDM_DVAE_WORK}/never.h5 --ae ${CMAKE_CURRENT_SOURCE_DIR}/fixtures/diffusers_vae_small)
endif()
