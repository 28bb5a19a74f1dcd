# Tests of `ldm sample` (tests/sample_scenarios.sh): the cli_sample_setup
# fixture trains tiny DiTs (on 4- and 3-channel pixels and on latents) and an
# autoencoder; then 1 and 3 ranks write the same samples (guided or not, Heun
# and Euler), the same seed gives the same file and another seed other images,
# PNG grids have their size (one row per class with --class all), an .npz holds
# the .h5's samples (gray as RGB) and labels as numpy reads them, and every bad
# input is refused with one line and exit status 2. Included from
# tests/CMakeLists.txt (LDM_MPIRUN, LDM_SYSTEM_PYTHON and LDM_EXPECT_ERROR come
# from there and prepare_tests.cmake).

if(TARGET ldm)
  set(LDM_SAMPLE_WORK ${CMAKE_CURRENT_BINARY_DIR}/sample)
  set(LDM_SAMPLE_COMMON ${LDM_SAMPLE_WORK}/common)
  string(REPLACE ";" " " ldm_sample_mpirun "${LDM_MPIRUN}")
  set(ldm_sample_env "LDM=$<TARGET_FILE:ldm>;LDM_MPIRUN=${ldm_sample_mpirun};LDM_PYTHON=${LDM_SYSTEM_PYTHON};\
LDM_TESTS=${CMAKE_CURRENT_SOURCE_DIR};LDM_CONFIGS=${CMAKE_SOURCE_DIR}/configs")

  foreach(scenario setup ranks seed png npz latents pictures)
    add_test(NAME cli_sample_${scenario}
      COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/sample_scenarios.sh ${scenario} ${LDM_SAMPLE_WORK}/${scenario}
              ${LDM_SAMPLE_COMMON})
    set_tests_properties(cli_sample_${scenario} PROPERTIES TIMEOUT 300 ENVIRONMENT "${ldm_sample_env}")
    if(scenario STREQUAL "setup")
      set_tests_properties(cli_sample_${scenario} PROPERTIES FIXTURES_SETUP sample_inputs)
    else()
      set_tests_properties(cli_sample_${scenario} PROPERTIES FIXTURES_REQUIRED sample_inputs)
    endif()
  endforeach()

  # ldm_sample_error(NAME REGEX ARGS...): ARGS (a command line, ldm or mpirun)
  # must exit 2 with one line matching REGEX.
  function(ldm_sample_error name regex)
    add_test(NAME cli_sample_${name} COMMAND ${LDM_EXPECT_ERROR} 2 "${regex}" -- ${ARGN})
    set_tests_properties(cli_sample_${name} PROPERTIES TIMEOUT 60 FIXTURES_REQUIRED sample_inputs)
  endfunction()
  set(ldm $<TARGET_FILE:ldm>)
  set(c ${LDM_SAMPLE_COMMON})
  set(never ${LDM_SAMPLE_WORK}/never.h5)

  ldm_sample_error(not_dit
    "^ldm: error: .*/ae/checkpoints/step-00000002: a checkpoint of kind \"autoencoder\", expected \"dit\" or \"consistency\" [(]ldm sample takes a run or checkpoint of ldm train or ldm distill[)]$"
    ${LDM_MPIRUN} -np 2 ${ldm} sample --model ${c}/ae --n 2 --out ${never})
  ldm_sample_error(missing_model
    "^ldm: error: /nonexistent/run: cannot read the model: No such file or directory [(]expected a run directory of ldm train or one of its checkpoints[)]$"
    ${ldm} sample --model /nonexistent/run --n 2 --out ${never})
  ldm_sample_error(no_checkpoint "^ldm: error: .*/configs: no checkpoint that passes verification"
    ${ldm} sample --model ${CMAKE_SOURCE_DIR}/configs --n 2 --out ${never})
  ldm_sample_error(latents_unknown_autoencoder
    "^ldm: error: .*/lat/checkpoints/step-00000003: the model was trained on latents [(]made by: none [(]synthetic[)][)]; name the autoencoder that decodes them with --ae$"
    ${LDM_MPIRUN} -np 2 ${ldm} sample --model ${c}/lat --n 2 --out ${never})
  ldm_sample_error(latents_other_autoencoder
    "^ldm: error: .*/ae/checkpoints/step-00000002: the autoencoder gives latents 2x8x8, but the model .*/lat/checkpoints/step-00000003 takes 4x8x8$"
    ${LDM_MPIRUN} -np 2 ${ldm} sample --model ${c}/lat --ae ${c}/ae --n 2 --out ${never})
  ldm_sample_error(ae_for_pixels
    "^ldm: error: ldm sample: option --ae: .*/pix4/checkpoints/step-00000003 was trained on images, not latents: it needs no autoencoder$"
    ${ldm} sample --model ${c}/pix4 --ae ${c}/ae --n 2 --out ${never})
  ldm_sample_error(ae_not_autoencoder
    "^ldm: error: .*/pix4/checkpoints/step-00000003: a checkpoint of kind \"dit\", expected \"autoencoder\""
    ${ldm} sample --model ${c}/latae --ae ${c}/pix4 --n 2 --out ${never})
  ldm_sample_error(bad_churn "^ldm: error: ldm sample: option --churn: expected a number in [[]0, 1e[+]06[]], got 'x'$"
    ${ldm} sample --model ${c}/pix4 --n 2 --churn x --out ${never})
  ldm_sample_error(train_ae_for_pixels
    "^ldm: error: ldm train: option --ae: .*/pix4[.]h5 holds images, not latents: its pictures need no autoencoder$"
    ${ldm} train --config ${CMAKE_SOURCE_DIR}/configs/tiny.json --set train.sample_every=1 --data ${c}/pix4.h5
    --ae ${c}/ae --run ${LDM_SAMPLE_WORK}/never_run)
  ldm_sample_error(train_ae_missing
    "^ldm: error: /nonexistent/ae: cannot read the autoencoder: No such file or directory"
    ${LDM_MPIRUN} -np 2 ${ldm} train --config ${CMAKE_SOURCE_DIR}/configs/tiny.json --set train.sample_every=1
    --data ${c}/ae_latents.h5 --set model.in_channels=2 --ae /nonexistent/ae --run ${LDM_SAMPLE_WORK}/never_run)
  ldm_sample_error(class_range
    "^ldm: error: ldm sample: option --class: expected all or a class in [[]0, 9[]] [(]the model has 10 classes[)], got '10'$"
    ${ldm} sample --model ${c}/pix4 --n 2 --class 10 --out ${never})
  ldm_sample_error(class_word "^ldm: error: ldm sample: option --class: expected all or a class in"
    ${ldm} sample --model ${c}/pix4 --n 2 --class some --out ${never})
  ldm_sample_error(existing_h5 "^ldm: error: .*/existing[.]h5: the output exists [(]use --force to overwrite it[)]$"
    ${LDM_MPIRUN} -np 2 ${ldm} sample --model ${c}/pix4 --n 2 --out ${c}/existing.h5)
  ldm_sample_error(existing_png "^ldm: error: .*/existing[.]png: the output exists [(]use --force to overwrite it[)]$"
    ${LDM_MPIRUN} -np 2 ${ldm} sample --model ${c}/pix3 --n 2 --out ${c}/existing.png)
  ldm_sample_error(existing_npz "^ldm: error: .*/existing[.]npz: the output exists [(]use --force to overwrite it[)]$"
    ${LDM_MPIRUN} -np 2 ${ldm} sample --model ${c}/pix3 --n 2 --out ${c}/existing.npz)
  ldm_sample_error(npz_four_channels
    "^ldm: error: ldm sample: option --out: an [.]npz holds RGB images, but .*/pix4/checkpoints/step-00000003 makes samples of 4 channels"
    ${LDM_MPIRUN} -np 2 ${ldm} sample --model ${c}/pix4 --n 2 --out ${LDM_SAMPLE_WORK}/never.npz)
  ldm_sample_error(bad_sampler "^ldm: error: ldm sample: option --sampler: expected heun or euler, got 'ddim'$"
    ${ldm} sample --model ${c}/pix4 --n 2 --sampler ddim --out ${never})
  ldm_sample_error(bad_cfg "^ldm: error: ldm sample: option --cfg: expected a number in [[]0, 1e[+]06[]], got '-1'$"
    ${ldm} sample --model ${c}/pix4 --n 2 --cfg -1 --out ${never})
  ldm_sample_error(bad_weights "^ldm: error: ldm sample: option --weights: expected ema or model, got 'last'$"
    ${ldm} sample --model ${c}/pix4 --n 2 --weights last --out ${never})
  ldm_sample_error(bad_out "^ldm: error: ldm sample: option --out: expected a file name ending in [.]h5, [.]png or [.]npz"
    ${ldm} sample --model ${c}/pix4 --n 2 --out ${LDM_SAMPLE_WORK}/never.jpg)
  ldm_sample_error(bad_n "^ldm: error: ldm sample: option --n: expected an integer in [[]1, "
    ${ldm} sample --model ${c}/pix4 --n 0 --out ${never})
  ldm_sample_error(missing_n "^ldm: error: ldm sample: option --n is required$"
    ${ldm} sample --model ${c}/pix4 --out ${never})
endif()
