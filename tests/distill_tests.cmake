# Tests of `ldm distill` (tests/distill_scenarios.sh): the cli_distill_setup
# fixture trains a tiny DiT teacher (and one of another shape, and an
# autoencoder) and distils a student; then the distillation loss falls, resume
# is bit-identical on 1 and 2 ranks (student, EMA, target network, optimizer),
# 1 and 2 ranks agree, `ldm sample` of the student works with --steps 1, 2 and 4,
# a student distilled over a range of guidance scales takes the scale as input
# (guidance-range), and every bad input is refused with one line and exit status 2; on a GPU
# (device.type cuda) distillation follows the CPU's, resumes exactly, and 2 GPU ranks
# distil as one (cuda, cuda-ranks, cuda-precision). Included from
# tests/CMakeLists.txt (LDM_MPIRUN, LDM_SYSTEM_PYTHON and LDM_EXPECT_ERROR come
# from there and prepare_tests.cmake).

if(TARGET ldm)
  set(LDM_DISTILL_WORK ${CMAKE_CURRENT_BINARY_DIR}/distill)
  set(LDM_DISTILL_COMMON ${LDM_DISTILL_WORK}/common)
  string(REPLACE ";" " " ldm_distill_mpirun "${LDM_MPIRUN}")
  set(ldm_distill_env "LDM=$<TARGET_FILE:ldm>;LDM_MPIRUN=${ldm_distill_mpirun};LDM_PYTHON=${LDM_SYSTEM_PYTHON};\
LDM_TESTS=${CMAKE_CURRENT_SOURCE_DIR};LDM_CONFIGS=${CMAKE_SOURCE_DIR}/configs")

  foreach(scenario setup learns resume-1rank resume-2ranks ranks sample guidance-range)
    string(REPLACE "-" "_" test_name "cli_distill_${scenario}")
    add_test(NAME ${test_name}
      COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/distill_scenarios.sh ${scenario} ${LDM_DISTILL_WORK}/${scenario}
              ${LDM_DISTILL_COMMON})
    set_tests_properties(${test_name} PROPERTIES TIMEOUT 300 ENVIRONMENT "${ldm_distill_env}")
    if(scenario STREQUAL "setup")
      set_tests_properties(${test_name} PROPERTIES FIXTURES_SETUP distill_inputs)
    else()
      set_tests_properties(${test_name} PROPERTIES FIXTURES_REQUIRED distill_inputs)
    endif()
  endforeach()

  # On the GPU (device.type cuda): against the CPU and exact resume, 2 GPU
  # ranks against 1 and accumulation, bf16/fp16; each makes its own small
  # teacher (no setup). Skipped (77) where ldm refuses cuda.
  foreach(scenario cuda cuda-ranks cuda-precision)
    string(REPLACE "-" "_" test_name "cli_distill_${scenario}")
    add_test(NAME ${test_name}
      COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/distill_scenarios.sh ${scenario} ${LDM_DISTILL_WORK}/${scenario}
              ${LDM_DISTILL_COMMON})
    set_tests_properties(${test_name} PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77 ENVIRONMENT "${ldm_distill_env}")
  endforeach()
  # Two ranks on one host need two GPUs (the CPU emulation of CUDA makes two).
  set_property(TEST cli_distill_cuda_ranks APPEND PROPERTY ENVIRONMENT "LDM_CUDA_EMULATED_DEVICES=2")

  # ldm_distill_error(NAME REGEX ARGS...): ARGS (a command line, ldm or mpirun)
  # must exit 2 with one line matching REGEX.
  function(ldm_distill_error name regex)
    add_test(NAME cli_distill_${name} COMMAND ${LDM_EXPECT_ERROR} 2 "${regex}" -- ${ARGN})
    set_tests_properties(cli_distill_${name} PROPERTIES TIMEOUT 60 FIXTURES_REQUIRED distill_inputs)
  endfunction()
  set(ldm $<TARGET_FILE:ldm>)
  set(c ${LDM_DISTILL_COMMON})
  set(tiny ${CMAKE_SOURCE_DIR}/configs/tiny.json)
  set(never ${LDM_DISTILL_WORK}/never)

  ldm_distill_error(other_shape
    "^ldm: error: .*/narrow/checkpoints/step-00000002: the teacher has model[.]hidden_size = 32, but .*tiny[.]json says 64 [(]the student is the teacher's network: give the config the teacher's model section[)]$"
    ${LDM_MPIRUN} -np 2 ${ldm} distill --teacher ${c}/narrow --config ${tiny} --data ${c}/data.h5 --run ${never})
  ldm_distill_error(autoencoder_teacher
    "^ldm: error: .*/ae/checkpoints/step-00000002: a checkpoint of kind \"autoencoder\", expected \"dit\" [(]ldm distill takes a run or checkpoint of ldm train[)]$"
    ${LDM_MPIRUN} -np 2 ${ldm} distill --teacher ${c}/ae --config ${tiny} --data ${c}/data.h5 --run ${never})
  ldm_distill_error(student_teacher
    "^ldm: error: .*/student/checkpoints/step-00000020: a checkpoint of kind \"consistency\", expected \"dit\" [(]ldm distill takes a run or checkpoint of ldm train[)]$"
    ${ldm} distill --teacher ${c}/student --config ${tiny} --data ${c}/data.h5 --run ${never})
  ldm_distill_error(missing_teacher
    "^ldm: error: /nonexistent/run: cannot read the teacher: No such file or directory [(]expected a run directory of ldm train or one of its checkpoints[)]$"
    ${ldm} distill --teacher /nonexistent/run --config ${tiny} --data ${c}/data.h5 --run ${never})
  ldm_distill_error(no_teacher_option "^ldm: error: ldm distill: option --teacher is required$"
    ${ldm} distill --config ${tiny} --data ${c}/data.h5 --run ${never})
  ldm_distill_error(data_kind
    "^ldm: error: .*/lat[.]h5: holds latents, but the teacher .*/teacher/checkpoints/step-00000150 was trained on images$"
    ${LDM_MPIRUN} -np 2 ${ldm} distill --teacher ${c}/teacher --config ${tiny} --data ${c}/lat.h5 --run ${never})
  ldm_distill_error(sigma_data
    "^ldm: error: .*/teacher/checkpoints/step-00000150: the teacher has diffusion[.]sigma_data = 0[.]5, but .*tiny[.]json says 1 "
    ${ldm} distill --teacher ${c}/teacher --config ${tiny} --set diffusion.sigma_data=1 --data ${c}/data.h5 --run ${never})
  ldm_distill_error(sigma_range
    "^ldm: error: --set distill[.]sigma_max=0[.]001: distill[.]sigma_max: expected more than distill[.]sigma_min [(]0[.]002[)], got 0[.]001$"
    ${ldm} distill --teacher ${c}/teacher --config ${tiny} --set distill.sigma_max=0.001 --data ${c}/data.h5 --run ${never})
  ldm_distill_error(val_data "^ldm: error: ldm distill: unknown option '--val-data' [(]see ldm distill --help[)]$"
    ${ldm} distill --teacher ${c}/teacher --config ${tiny} --data ${c}/data.h5 --val-data ${c}/data.h5 --run ${never})
  ldm_distill_error(train_resumes_student
    "^ldm: error: .*/student/checkpoints/step-00000020: a checkpoint of kind \"consistency\", expected \"dit\""
    ${ldm} train --config ${tiny} --data ${c}/data.h5 --run ${never} --resume ${c}/student/checkpoints/step-00000020)
  ldm_distill_error(resume_from_dit
    "^ldm: error: .*/teacher/checkpoints/step-00000150: a checkpoint of kind \"dit\", expected \"consistency\""
    ${ldm} distill --teacher ${c}/teacher --config ${tiny} --data ${c}/data.h5 --run ${never}
    --resume ${c}/teacher/checkpoints/step-00000150)
  ldm_distill_error(sample_steps_3
    "^ldm: error: ldm sample: option --steps: the consistency model .*/student/checkpoints/step-00000020 has sigma points for 1, 2, 4 steps, not 3$"
    ${LDM_MPIRUN} -np 2 ${ldm} sample --model ${c}/student --steps 3 --n 2 --out ${never}.h5)
  ldm_distill_error(sample_cfg
    "^ldm: error: ldm sample: option --cfg: does not apply to the consistency model .*/student/checkpoints/step-00000020 [(]its sampler takes --steps 1, 2 or 4 only[)]$"
    ${ldm} sample --model ${c}/student --cfg 2 --n 2 --out ${never}.h5)
  ldm_distill_error(sample_sampler
    "^ldm: error: ldm sample: option --sampler: does not apply to the consistency model"
    ${ldm} sample --model ${c}/student --sampler euler --n 2 --out ${never}.h5)
  ldm_distill_error(resume_other_teacher
    "^ldm: error: .*/student/checkpoints/step-00000020: consistency[.]teacher is \"[^\"]*/teacher/checkpoints/step-00000150 [(]step 150, ema weights[)]\" in the checkpoint but \"[^\"]*/teacher/checkpoints/step-00000075 [(]step 75, ema weights[)]\" in this run [(]a distillation resumes with its own --teacher and distill settings[)]$"
    ${LDM_MPIRUN} -np 2 ${ldm} distill --teacher ${c}/teacher/checkpoints/step-00000075 --config ${tiny} --data ${c}/data.h5
    --run ${never} --resume ${c}/student/checkpoints/step-00000020)
  ldm_distill_error(resume_other_points
    "^ldm: error: .*/student/checkpoints/step-00000020: consistency[.]num_points is 18 in the checkpoint but 10 in this run [(]a distillation resumes with its own --teacher and distill settings[)]$"
    ${ldm} distill --teacher ${c}/teacher --config ${tiny} --set distill.num_points=10 --data ${c}/data.h5
    --run ${never} --resume ${c}/student/checkpoints/step-00000020)
  ldm_distill_error(resume_adds_guidance_range
    "^ldm: error: .*/student/checkpoints/step-00000020: consistency[.]guidance_max is missing in the checkpoint but 3 in this run "
    ${ldm} distill --teacher ${c}/teacher --config ${tiny} --set distill.guidance_max=3 --data ${c}/data.h5
    --run ${never} --resume ${c}/student/checkpoints/step-00000020)
  ldm_distill_error(resume_drops_guidance_range
    "^ldm: error: .*/ranged/checkpoints/step-00000020: consistency[.]guidance_max is 3 in the checkpoint but not set in this run "
    ${ldm} distill --teacher ${c}/teacher --config ${tiny} --data ${c}/data.h5
    --run ${never} --resume ${c}/ranged/checkpoints/step-00000020)
  ldm_distill_error(ae_on_images
    "^ldm: error: ldm distill: option --ae: .*/data[.]h5 holds images, not latents: its pictures need no autoencoder$"
    ${LDM_MPIRUN} -np 2 ${ldm} distill --teacher ${c}/teacher --config ${tiny} --data ${c}/data.h5 --ae ${c}/ae
    --set train.sample_every=5 --run ${never})
  ldm_distill_error(sample_sigmas_order
    "^ldm: error: ldm sample: option --sigmas: expected decreasing numbers above distill[.]sigma_min [(]0[.]002[)], got '0[.]5,80'$"
    ${ldm} sample --model ${c}/student --sigmas 0.5,80 --n 2 --out ${never}.h5)
  ldm_distill_error(sample_sigmas_text
    "^ldm: error: ldm sample: option --sigmas: expected up to 8 comma-separated numbers, got '80,x'$"
    ${ldm} sample --model ${c}/student --sigmas 80,x --n 2 --out ${never}.h5)
  ldm_distill_error(sample_sigmas_steps
    "^ldm: error: ldm sample: option --sigmas: 1 noise levels, but --steps 2$"
    ${ldm} sample --model ${c}/student --steps 2 --sigmas 80 --n 2 --out ${never}.h5)
  ldm_distill_error(sample_sigmas_not_student
    "^ldm: error: ldm sample: option --sigmas: .*/teacher/checkpoints/step-00000150 is not a consistency model"
    ${ldm} sample --model ${c}/teacher --sigmas 80 --n 2 --out ${never}.h5)
  ldm_distill_error(guidance_max_below
    "^ldm: error: --set distill[.]guidance_max=2: distill[.]guidance_max: expected 0 [(]a fixed guidance scale[)] or more than distill[.]guidance [(]2[)], got 2$"
    ${ldm} distill --teacher ${c}/teacher --config ${tiny} --set distill.guidance=2 --set distill.guidance_max=2
    --data ${c}/data.h5 --run ${never})
  ldm_distill_error(sample_cfg_outside_range
    "^ldm: error: ldm sample: option --cfg: the consistency model .*/ranged/checkpoints/step-00000020 was distilled for guidance scales in [[]1, 3[]], got 4$"
    ${LDM_MPIRUN} -np 2 ${ldm} sample --model ${c}/ranged --cfg 4 --n 2 --out ${never}.h5)
  ldm_distill_error(sample_ranged_churn
    "^ldm: error: ldm sample: option --churn: does not apply to the consistency model .*/ranged/checkpoints/step-00000020 [(]its sampler takes --steps 1, 2 or 4 and --cfg only[)]$"
    ${ldm} sample --model ${c}/ranged --cfg 2 --churn 1 --n 2 --out ${never}.h5)
endif()
