# Tests of `ldm encode` and `ldm decode` (tests/encode_scenarios.sh): the
# cli_encode_setup fixture trains a tiny autoencoder and makes the inputs; then
# 1 and 3 ranks write the same latents, labels and statistics (means, posterior
# samples, float16), the statistics match numpy's, the latents and decoded
# images match the PyTorch reference of the autoencoder (when PyTorch is there)
# and the logged validation PSNR, decode writes data sets and PNG grids, and
# every bad input is refused with one line and exit status 2 (also under
# mpirun). Included from tests/CMakeLists.txt (LDM_MPIRUN, LDM_SYSTEM_PYTHON and
# LDM_EXPECT_ERROR come from there and prepare_tests.cmake).

if(TARGET ldm)
  set(LDM_ENCODE_WORK ${CMAKE_CURRENT_BINARY_DIR}/encode)
  set(LDM_ENCODE_COMMON ${LDM_ENCODE_WORK}/common)
  string(REPLACE ";" " " ldm_encode_mpirun "${LDM_MPIRUN}")
  set(ldm_encode_env "LDM=$<TARGET_FILE:ldm>;LDM_MPIRUN=${ldm_encode_mpirun};LDM_PYTHON=${LDM_SYSTEM_PYTHON};\
LDM_TESTS=${CMAKE_CURRENT_SOURCE_DIR};LDM_CONFIGS=${CMAKE_SOURCE_DIR}/configs")

  foreach(scenario setup ranks model failed-run)
    string(REPLACE "-" "_" test_name "cli_encode_${scenario}")
    add_test(NAME ${test_name}
      COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/encode_scenarios.sh ${scenario} ${LDM_ENCODE_WORK}/${scenario}
              ${LDM_ENCODE_COMMON})
    set_tests_properties(${test_name} PROPERTIES TIMEOUT 300 ENVIRONMENT "${ldm_encode_env}")
    if(scenario STREQUAL "setup")
      set_tests_properties(${test_name} PROPERTIES FIXTURES_SETUP encode_inputs)
    else()
      set_tests_properties(${test_name} PROPERTIES FIXTURES_REQUIRED encode_inputs)
    endif()
  endforeach()

  # ldm_encode_error(NAME REGEX ARGS...): ARGS (a command line, ldm or mpirun)
  # must exit 2 with one line matching REGEX.
  function(ldm_encode_error name regex)
    add_test(NAME cli_encode_${name} COMMAND ${LDM_EXPECT_ERROR} 2 "${regex}" -- ${ARGN})
    set_tests_properties(cli_encode_${name} PROPERTIES TIMEOUT 60 FIXTURES_REQUIRED encode_inputs)
  endfunction()
  set(ldm $<TARGET_FILE:ldm>)
  set(c ${LDM_ENCODE_COMMON})
  set(never ${LDM_ENCODE_WORK}/never.h5)

  ldm_encode_error(missing_ae "^ldm: error: /nonexistent/ae: cannot read the autoencoder: No such file or directory"
    ${ldm} encode --ae /nonexistent/ae --data ${c}/images.h5 --out ${never})
  ldm_encode_error(no_checkpoint "^ldm: error: .*/configs: no checkpoint that passes verification"
    ${ldm} encode --ae ${CMAKE_SOURCE_DIR}/configs --data ${c}/images.h5 --out ${never})
  ldm_encode_error(not_autoencoder
    "^ldm: error: .*/dit/checkpoints/step-00000002: a checkpoint of kind \"dit\", expected \"autoencoder\" [(]ldm encode takes a run or checkpoint of ldm train-ae[)]$"
    ${LDM_MPIRUN} -np 2 ${ldm} encode --ae ${c}/dit --data ${c}/images.h5 --out ${never})
  ldm_encode_error(damaged_checkpoint "^ldm: error: .*/damaged/ema[.]safetensors: checksum mismatch"
    ${ldm} encode --ae ${c}/damaged --data ${c}/images.h5 --out ${never})
  ldm_encode_error(diverged
    "^ldm: error: .*/images[.]h5: the autoencoder .*/diverged gave a non-finite latent for image 0 [(]damaged or diverged weights[?][)]$"
    ${ldm} encode --ae ${c}/diverged --data ${c}/images.h5 --out ${never})
  ldm_encode_error(image_size
    "^ldm: error: .*/small[.]h5: images are 3 x 8 x 8 [(]C x H x W[)], but the autoencoder .*/ae/checkpoints/step-00000040 takes 3 x 16 x 16$"
    ${LDM_MPIRUN} -np 2 ${ldm} encode --ae ${c}/ae --data ${c}/small.h5 --out ${never})
  ldm_encode_error(image_channels
    "^ldm: error: .*/gray[.]h5: images are 1 x 16 x 16 [(]C x H x W[)], but the autoencoder .* takes 3 x 16 x 16$"
    ${ldm} encode --ae ${c}/ae --data ${c}/gray.h5 --out ${never})
  ldm_encode_error(existing_output "^ldm: error: .*/existing[.]h5: the output exists [(]use --force to overwrite it[)]$"
    ${LDM_MPIRUN} -np 2 ${ldm} encode --ae ${c}/ae --data ${c}/images.h5 --out ${c}/existing.h5)
  ldm_encode_error(latents_input
    "^ldm: error: .*/latents[.]h5: holds /latents, but ldm encode takes images [(]/images uint8 [(]N, H, W, C[)][)]$"
    ${ldm} encode --ae ${c}/ae --data ${c}/latents.h5 --out ${never})
  ldm_encode_error(missing_data "^ldm: error: /nonexistent[.]h5: cannot read the data set file"
    ${ldm} encode --ae ${c}/ae --data /nonexistent.h5 --out ${never})
  ldm_encode_error(bad_weights "^ldm: error: ldm encode: option --weights: expected ema or model, got 'last'$"
    ${ldm} encode --ae ${c}/ae --data ${c}/images.h5 --out ${never} --weights last)
  ldm_encode_error(bad_dtype "^ldm: error: ldm encode: option --dtype: expected float32 or float16, got 'bf16'$"
    ${ldm} encode --ae ${c}/ae --data ${c}/images.h5 --out ${never} --dtype bf16)
  ldm_encode_error(bad_batch "^ldm: error: ldm encode: option --batch: expected an integer in [[]1, 65536[]], got '0'$"
    ${ldm} encode --ae ${c}/ae --data ${c}/images.h5 --out ${never} --batch 0)
  ldm_encode_error(missing_out "^ldm: error: ldm encode: option --out is required$"
    ${ldm} encode --ae ${c}/ae --data ${c}/images.h5)

  ldm_encode_error(decode_latent_shape
    "^ldm: error: .*/latents4[.]h5: latents are 4 x 8 x 8 [(]C x h x w[)], but the autoencoder .*/ae/checkpoints/step-00000040 decodes 2 x 8 x 8$"
    ${LDM_MPIRUN} -np 2 ${ldm} decode --ae ${c}/ae --data ${c}/latents4.h5 --out ${never})
  ldm_encode_error(decode_images_input
    "^ldm: error: .*/images[.]h5: holds /images, but ldm decode takes latents [(]/latents [(]N, C, h, w[)], made by ldm encode[)]$"
    ${ldm} decode --ae ${c}/ae --data ${c}/images.h5 --out ${never})
  ldm_encode_error(decode_not_autoencoder "^ldm: error: .*/dit/checkpoints/step-00000002: a checkpoint of kind \"dit\""
    ${ldm} decode --ae ${c}/dit --data ${c}/latents.h5 --out ${never})
  ldm_encode_error(decode_missing_ae "^ldm: error: /nonexistent/ae: cannot read the autoencoder"
    ${ldm} decode --ae /nonexistent/ae --data ${c}/latents.h5 --out ${LDM_ENCODE_WORK}/never.png)
  ldm_encode_error(decode_existing_h5 "^ldm: error: .*/existing[.]h5: the output exists [(]use --force to overwrite it[)]$"
    ${LDM_MPIRUN} -np 2 ${ldm} decode --ae ${c}/ae --data ${c}/latents.h5 --out ${c}/existing.h5)
  ldm_encode_error(decode_existing_png "^ldm: error: .*/existing[.]png: the output exists [(]use --force to overwrite it[)]$"
    ${LDM_MPIRUN} -np 2 ${ldm} decode --ae ${c}/ae --data ${c}/latents.h5 --out ${c}/existing.png)
  ldm_encode_error(decode_bad_n "^ldm: error: ldm decode: option --n: expected an integer in [[]1, "
    ${ldm} decode --ae ${c}/ae --data ${c}/latents.h5 --out ${LDM_ENCODE_WORK}/never.png --n 0)
endif()
